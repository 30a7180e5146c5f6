//! openraft's own storage conformance suite against `LogStore`, with the kv example's type config and state
//! machine (not bop's).

mod common;

use std::sync::Arc;

use bop_raft::LogStore;
use bop_storage::io::BufferedIo;
use common::{open_store, KvConfig, KvStateMachine};
use openraft::testing::log::{StoreBuilder, Suite};
use openraft::type_config::TypeConfigExt;
use openraft::StorageError;

struct Builder;

impl StoreBuilder<KvConfig, LogStore<KvConfig>, KvStateMachine, tempfile::TempDir> for Builder {
    async fn build(
        &self,
    ) -> Result<(tempfile::TempDir, LogStore<KvConfig>, KvStateMachine), StorageError<KvConfig>> {
        let dir = tempfile::tempdir().map_err(|e| StorageError::read(KvConfig::err_from_error(&e)))?;
        let store = open_store(dir.path(), Arc::new(BufferedIo::new()));
        Ok((dir, store, KvStateMachine::default()))
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn openraft_storage_suite_passes_against_log_store() {
    Suite::test_all(Builder).await.expect("openraft's storage suite");
}
