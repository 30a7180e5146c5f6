//! `bop node`'s settings: flags, `BOP_*` environment variables and the TOML config file, checked into a
//! [`NodePlan`] (a half TLS configuration, `--non-voter` without `--join` and the like are usage errors
//! naming what is wrong).

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::sync::Arc;

use bop_raft::auth::Auth;
use bop_raft::http_client::ClientSettings;
use bop_raft::https::HttpTls;
use bop_raft::node::NodeConfig;
use clap::Args;

/// `bop node`'s flags. Each also reads a `BOP_*` environment variable; both override the config file.
#[derive(Args, Debug, Default)]
pub(crate) struct NodeArgs {
    /// A TOML file with the same settings: each key is a flag's name with `_` for `-` (id, data_dir,
    /// raft_addr, http_addr, bootstrap, join, non_voter, raft_tls_*, auth, join_as, http_tls_*), and
    /// http_cors_origins, a list.
    #[arg(long, value_name = "FILE", env = "BOP_CONFIG")]
    config: Option<PathBuf>,
    /// The node's id (unique in the cluster, not 0).
    #[arg(long, env = "BOP_ID")]
    id: Option<u64>,
    /// The node's data directory.
    #[arg(long, value_name = "DIR", env = "BOP_DATA_DIR")]
    data_dir: Option<PathBuf>,
    /// Where the Raft transport listens (HOST:PORT).
    #[arg(long, value_name = "HOST:PORT", env = "BOP_RAFT_ADDR")]
    raft_addr: Option<String>,
    /// Where the HTTP API listens (HOST:PORT).
    #[arg(long, value_name = "HOST:PORT", env = "BOP_HTTP_ADDR")]
    http_addr: Option<String>,
    /// On first start, form a new cluster of these members: ID=RAFT_ADDR/HTTP_ADDR,...
    #[arg(long, visible_alias = "init", value_name = "MEMBERS", env = "BOP_BOOTSTRAP")]
    bootstrap: Option<String>,
    /// On first start, ask the cluster at this HTTP address (any member) to add this node as a voter.
    #[arg(long, value_name = "HTTP_ADDR", env = "BOP_JOIN")]
    join: Option<String>,
    /// With --join: join as a non-voter (a read-only learner that receives the log but never votes or
    /// counts in a quorum; it stays one). `level=auto` reads are served locally on it.
    #[arg(long, env = "BOP_NON_VOTER")]
    non_voter: bool,
    /// Quorum-loss recovery: restart this former member, with its data, as a cluster of one (the only
    /// voter), then join new nodes to it. Only when a majority of the voters is gone for good; the old
    /// members must never come back with their data. Once done, later starts ignore it (see
    /// docs/operations.md).
    #[arg(long, env = "BOP_FORCE_NEW_CLUSTER")]
    force_new_cluster: bool,
    /// Mutual TLS on the Raft transport: the cluster CA's certificate (PEM). Needs --raft-tls-cert and
    /// --raft-tls-key; every node's certificate must name it as the DNS name bop-node-ID.
    #[arg(long, value_name = "FILE", env = "BOP_RAFT_TLS_CA")]
    raft_tls_ca: Option<PathBuf>,
    /// This node's certificate chain (PEM), issued by the CA, naming bop-node-ID.
    #[arg(long, value_name = "FILE", env = "BOP_RAFT_TLS_CERT")]
    raft_tls_cert: Option<PathBuf>,
    /// This node's private key (PEM).
    #[arg(long, value_name = "FILE", env = "BOP_RAFT_TLS_KEY")]
    raft_tls_key: Option<PathBuf>,
    /// Users and permissions on the HTTP API: an auth file in rqlite's format (a JSON list of username,
    /// password, perms). Without it every caller may do everything.
    #[arg(long, value_name = "FILE", env = "BOP_AUTH")]
    auth: Option<PathBuf>,
    /// With --join and --auth: join as this user of the auth file (its password must be stored in plain
    /// text there, as the node sends it).
    #[arg(long, value_name = "USER", env = "BOP_JOIN_AS")]
    join_as: Option<String>,
    /// TLS on the HTTP API: this node's certificate chain (PEM). Needs --http-tls-key and --http-tls-ca.
    /// Reloaded when the file changes or on SIGHUP.
    #[arg(long, value_name = "FILE", env = "BOP_HTTP_TLS_CERT")]
    http_tls_cert: Option<PathBuf>,
    /// The HTTP certificate's private key (PEM).
    #[arg(long, value_name = "FILE", env = "BOP_HTTP_TLS_KEY")]
    http_tls_key: Option<PathBuf>,
    /// The CA the nodes' HTTP certificates chain to (PEM): trusted when this node forwards to another.
    #[arg(long, value_name = "FILE", env = "BOP_HTTP_TLS_CA")]
    http_tls_ca: Option<PathBuf>,
    /// Mutual TLS on the HTTP API: clients must present a certificate of this CA (PEM). Nodes present their
    /// HTTP certificate when they call each other, so it must chain to this CA too.
    #[arg(long, value_name = "FILE", env = "BOP_HTTP_TLS_CLIENT_CA")]
    http_tls_client_ca: Option<PathBuf>,
    /// A web origin (SCHEME://HOST[:PORT]) whose pages may call the API from a browser (CORS, credentials
    /// included); repeat it, or separate origins by commas. Without it no origin may, and cross-origin
    /// calls that could change something are refused.
    #[arg(long, value_name = "ORIGIN", env = "BOP_HTTP_CORS_ORIGIN", value_delimiter = ',')]
    http_cors_origin: Vec<String>,
    /// While this node leads, remove a member (voter or not) it has not heard from for this long, e.g.
    /// 72h (rqlite's reap timeout). Off by default: a dead voter then stays in every quorum until removed.
    #[arg(long, value_name = "DURATION", env = "BOP_REMOVE_DEAD_AFTER")]
    remove_dead_after: Option<String>,
    /// Write groups a database's writer may have proposed to Raft and not yet answered (1 to 64; default
    /// 4): the next group runs on top of the proposed ones, and every client is still answered only once
    /// its own commit is applied. 1 runs one group at a time.
    #[arg(long, value_name = "N", env = "BOP_PIPELINE_DEPTH", value_parser = clap::value_parser!(u64).range(1..=64))]
    pipeline_depth: Option<u64>,
    /// Serve `level=linearizable` reads on the leader from its lease: no heartbeat round while a quorum
    /// acknowledged it within one election timeout, shortened by `--clock-drift-max`. Safe only while
    /// the nodes' clocks run within that margin of each other (docs/operations.md). `level=strong` always
    /// confirms with a round.
    #[arg(long, env = "BOP_READ_LEASE")]
    read_lease: bool,
    /// With `--read-lease`: how much faster, in percent, one node's clock may run than another's (0 to
    /// 100; default 10). The lease is one election timeout × 100 / (100 + this).
    #[arg(long, value_name = "PERCENT", env = "BOP_CLOCK_DRIFT_MAX", value_parser = clap::value_parser!(u32).range(0..=100))]
    clock_drift_max: Option<u32>,
}

/// `bop node`'s settings in its `--config` file (TOML); flags and environment variables win over it.
#[derive(Default, serde::Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct NodeFile {
    id: Option<u64>,
    data_dir: Option<PathBuf>,
    raft_addr: Option<String>,
    http_addr: Option<String>,
    /// A new cluster's members, `ID=RAFT_ADDR/HTTP_ADDR,...` (as `--bootstrap`).
    bootstrap: Option<String>,
    /// An HTTP address of a running cluster to join on first start (as `--join`).
    join: Option<String>,
    /// Join as a non-voter (as `--non-voter`).
    non_voter: Option<bool>,
    /// Quorum-loss recovery (as `--force-new-cluster`).
    force_new_cluster: Option<bool>,
    /// Mutual TLS on the Raft transport (as `--raft-tls-ca`, `--raft-tls-cert`, `--raft-tls-key`).
    raft_tls_ca: Option<PathBuf>,
    raft_tls_cert: Option<PathBuf>,
    raft_tls_key: Option<PathBuf>,
    /// Users and permissions (as `--auth`), and the user a joining node calls as (as `--join-as`).
    auth: Option<PathBuf>,
    join_as: Option<String>,
    /// TLS on the HTTP API (as `--http-tls-cert`, `--http-tls-key`, `--http-tls-ca`, `--http-tls-client-ca`).
    http_tls_cert: Option<PathBuf>,
    http_tls_key: Option<PathBuf>,
    http_tls_ca: Option<PathBuf>,
    http_tls_client_ca: Option<PathBuf>,
    /// Origins allowed to call the API from a browser (as `--http-cors-origin`).
    http_cors_origins: Option<Vec<String>>,
    /// Remove members silent this long (as `--remove-dead-after`).
    remove_dead_after: Option<String>,
    /// Unanswered write groups per database (as `--pipeline-depth`).
    pipeline_depth: Option<u64>,
    /// Lease reads (as `--read-lease`) and their clock-drift margin (as `--clock-drift-max`).
    read_lease: Option<bool>,
    clock_drift_max: Option<u32>,
}

/// `RAFT_ADDR/HTTP_ADDR` (or a bare `RAFT_ADDR`) as a membership address, `RAFT_ADDR http=HTTP_ADDR`.
pub(crate) fn member_addr(addr: &str) -> String {
    match addr.split_once('/') {
        Some((raft, http)) => format!("{raft} http={http}"),
        None => addr.to_owned(),
    }
}

/// Parses `ID=RAFT_ADDR[/HTTP_ADDR],...` into membership addresses.
pub(crate) fn parse_members(list: &str) -> Result<BTreeMap<u64, String>, String> {
    let mut members = BTreeMap::new();
    for pair in list.split(',') {
        let (member, addr) =
            pair.split_once('=').ok_or_else(|| format!("--bootstrap wants ID=ADDR, got {pair:?}"))?;
        let id = member.parse::<u64>().map_err(|e| format!("--bootstrap id {member:?}: {e}"))?;
        members.insert(id, member_addr(addr));
    }
    Ok(members)
}

/// A node's configuration and what it does on first start, from flags, environment and file.
#[derive(Debug)]
pub(crate) struct NodePlan {
    pub(crate) config: NodeConfig,
    pub(crate) bootstrap: Option<BTreeMap<u64, String>>,
    pub(crate) join: Option<String>,
    /// Join as a learner that stays one.
    pub(crate) non_voter: bool,
    /// Restart as a cluster of one (quorum-loss recovery).
    pub(crate) force_new_cluster: bool,
    pub(crate) raft_tls: Option<bop_raft::tcp::tls::TransportTls>,
    pub(crate) auth: Option<Arc<Auth>>,
    pub(crate) http_tls: Option<Arc<HttpTls>>,
    pub(crate) cors_origins: Vec<String>,
    pub(crate) remove_dead_after: Option<std::time::Duration>,
    /// `NodeLimits::pipeline_depth`.
    pub(crate) pipeline_depth: usize,
    /// `NodeEnv::read_lease`.
    pub(crate) read_lease: Option<bop_raft::node::ReadLease>,
    /// How `--join` reaches the cluster: `--join-as`'s credentials, and TLS.
    pub(crate) join_client: ClientSettings,
}

/// The lease setting of `--read-lease` and `--clock-drift-max` (`bop node` and `bop up`): `None` when off;
/// a margin without the lease, or one past 100 %, is refused.
pub(crate) fn read_lease(
    on: bool,
    clock_drift_max: Option<u32>,
) -> Result<Option<bop_raft::node::ReadLease>, String> {
    match (on, clock_drift_max) {
        (false, Some(_)) => Err("--clock-drift-max is the margin of --read-lease; give both".into()),
        (false, None) => Ok(None),
        (true, Some(drift)) if drift > 100 => Err(format!("clock_drift_max {drift}: want 0 to 100")),
        (true, drift) => Ok(Some(bop_raft::node::ReadLease {
            clock_drift_percent: drift.unwrap_or(bop_raft::node::ReadLease::DEFAULT_DRIFT_PERCENT),
        })),
    }
}

pub(crate) fn node_plan(args: NodeArgs) -> Result<NodePlan, String> {
    let file = match &args.config {
        Some(path) => {
            let text =
                std::fs::read_to_string(path).map_err(|e| format!("reading {}: {e}", path.display()))?;
            toml::from_str::<NodeFile>(&text).map_err(|e| format!("{}: {e}", path.display()))?
        }
        None => NodeFile::default(),
    };
    let bootstrap = args.bootstrap.or(file.bootstrap).map(|list| parse_members(&list)).transpose()?;
    let join = args.join.or(file.join);
    if bootstrap.is_some() && join.is_some() {
        return Err("--bootstrap and --join exclude each other".into());
    }
    let non_voter = args.non_voter || file.non_voter.unwrap_or(false);
    if non_voter && join.is_none() {
        return Err(
            "--non-voter needs --join: a non-voter joins a running cluster (bootstrap members vote)".into()
        );
    }
    let force_new_cluster = args.force_new_cluster || file.force_new_cluster.unwrap_or(false);
    if force_new_cluster && (bootstrap.is_some() || join.is_some()) {
        return Err(
            "--force-new-cluster restarts a former member with its data; it takes neither --bootstrap \
                    nor --join"
                .into(),
        );
    }
    let config = NodeConfig {
        id: args.id.or(file.id).ok_or("--id (BOP_ID, or id in the config file) is required")?,
        data_dir: args
            .data_dir
            .or(file.data_dir)
            .ok_or("--data-dir (BOP_DATA_DIR, or data_dir in the config file) is required")?,
        raft_addr: args
            .raft_addr
            .or(file.raft_addr)
            .ok_or("--raft-addr (BOP_RAFT_ADDR, or raft_addr in the config file) is required")?,
        http_addr: args
            .http_addr
            .or(file.http_addr)
            .ok_or("--http-addr (BOP_HTTP_ADDR, or http_addr in the config file) is required")?,
    };
    let tls_files = [
        ("--raft-tls-ca", args.raft_tls_ca.or(file.raft_tls_ca)),
        ("--raft-tls-cert", args.raft_tls_cert.or(file.raft_tls_cert)),
        ("--raft-tls-key", args.raft_tls_key.or(file.raft_tls_key)),
    ];
    let raft_tls = match &tls_files {
        [(_, None), (_, None), (_, None)] => None,
        [(_, Some(ca)), (_, Some(cert)), (_, Some(key))] => Some(
            bop_raft::tcp::tls::TransportTls::from_pem_files(ca, cert, key)
                .map_err(|e| format!("Raft transport TLS: {e}"))?,
        ),
        _ => {
            let missing: Vec<&str> =
                tls_files.iter().filter(|(_, path)| path.is_none()).map(|(flag, _)| *flag).collect();
            return Err(format!(
                "TLS on the Raft transport needs all of --raft-tls-ca, --raft-tls-cert and --raft-tls-key; missing {}",
                missing.join(", ")
            ));
        }
    };
    let auth = match args.auth.or(file.auth) {
        Some(path) => Some(Arc::new(Auth::load(&path).map_err(|e| format!("--auth: {e}"))?)),
        None => None,
    };
    let http_tls = http_tls(
        args.http_tls_cert.or(file.http_tls_cert),
        args.http_tls_key.or(file.http_tls_key),
        args.http_tls_ca.or(file.http_tls_ca),
        args.http_tls_client_ca.or(file.http_tls_client_ca),
    )?;
    let mut join_client =
        ClientSettings { authorization: None, tls: http_tls.as_ref().map(|tls| tls.client()) };
    if let Some(user) = args.join_as.or(file.join_as) {
        if join.is_none() {
            return Err("--join-as needs --join".into());
        }
        let auth = auth.as_ref().ok_or("--join-as needs --auth (the user's password is read from it)")?;
        let password = auth.plain_password(&user).ok_or_else(|| {
            format!("--join-as {user:?}: no such user in the auth file, or its password is a hash (a joining node needs the plain password)")
        })?;
        join_client.authorization = Some(bop_raft::auth::basic_header(&user, password));
    }
    let cors_origins = if args.http_cors_origin.is_empty() {
        file.http_cors_origins.unwrap_or_default()
    } else {
        args.http_cors_origin
    };
    for origin in &cors_origins {
        check_origin(origin)?;
    }
    let remove_dead_after = match args.remove_dead_after.or(file.remove_dead_after) {
        None => None,
        Some(text) => match bop_raft::node::parse_duration(&text) {
            Some(after) if after >= std::time::Duration::from_secs(1) => Some(after),
            _ => {
                return Err(format!(
                    "--remove-dead-after {text:?}: a duration of at least 1s (e.g. 30s, 10m, 72h)"
                ))
            }
        },
    };
    let pipeline_depth = match args.pipeline_depth.or(file.pipeline_depth) {
        None => bop_raft::node::NodeLimits::default().pipeline_depth,
        Some(depth @ 1..=64) => depth as usize,
        Some(depth) => return Err(format!("pipeline_depth {depth}: want 1 to 64")),
    };
    let clock_drift_max = args.clock_drift_max.or(file.clock_drift_max);
    let read_lease = read_lease(args.read_lease || file.read_lease.unwrap_or(false), clock_drift_max)?;
    Ok(NodePlan {
        config,
        bootstrap,
        join,
        non_voter,
        force_new_cluster,
        raft_tls,
        auth,
        http_tls,
        cors_origins,
        remove_dead_after,
        pipeline_depth,
        read_lease,
        join_client,
    })
}

/// A web origin as browsers send it in `Origin`: `http://` or `https://`, a host, maybe a port, nothing more.
fn check_origin(origin: &str) -> Result<(), String> {
    let bad = |why: &str| {
        Err(format!(
            "--http-cors-origin {origin:?}: {why} (want SCHEME://HOST[:PORT], e.g. https://app.example.com)"
        ))
    };
    if origin == "*" {
        return bad("any origin is not offered: with credentials browsers refuse it, and without them it lets every page in");
    }
    let Some((scheme, host)) = origin.split_once("://") else { return bad("no scheme") };
    if scheme != "http" && scheme != "https" {
        return bad("the scheme is http or https");
    }
    if host.is_empty() || host.contains(['/', '?', '#', ' ', '@']) {
        return bad("an origin has a host and no path");
    }
    Ok(())
}

/// TLS on the HTTP API from its files: certificate, key and CA all or none; the client CA only with them.
fn http_tls(
    cert: Option<PathBuf>,
    key: Option<PathBuf>,
    ca: Option<PathBuf>,
    client_ca: Option<PathBuf>,
) -> Result<Option<Arc<HttpTls>>, String> {
    match (cert, key, ca) {
        (None, None, None) if client_ca.is_none() => Ok(None),
        (Some(cert), Some(key), Some(ca)) => HttpTls::from_pem_files(&cert, &key, &ca, client_ca.as_deref())
            .map(|tls| Some(Arc::new(tls)))
            .map_err(|e| format!("HTTP TLS: {e}")),
        (cert, key, ca) => {
            let missing: Vec<&str> = [
                ("--http-tls-cert", cert.is_none()),
                ("--http-tls-key", key.is_none()),
                ("--http-tls-ca", ca.is_none()),
            ]
            .iter()
            .filter(|(_, missing)| *missing)
            .map(|(flag, _)| *flag)
            .collect();
            Err(format!(
                "TLS on the HTTP API needs all of --http-tls-cert, --http-tls-key and --http-tls-ca; missing {}",
                missing.join(", ")
            ))
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The settings every node needs, and nothing else.
    fn base() -> NodeArgs {
        NodeArgs {
            id: Some(1),
            data_dir: Some("d".into()),
            raft_addr: Some("r:1".into()),
            http_addr: Some("h:1".into()),
            ..NodeArgs::default()
        }
    }

    /// A throwaway CA and node 1's certificate and key in `dir`: their paths.
    fn pki(dir: &std::path::Path) -> [PathBuf; 3] {
        bop_raft::tcp::tls::write_throwaway_pki(dir, &[1]).expect("pki");
        ["ca.pem", "1.pem", "1-key.pem"].map(|name| dir.join(name))
    }

    #[test]
    fn flags_override_the_config_file() {
        let dir = tempfile::tempdir().expect("tempdir");
        let file = dir.path().join("node.toml");
        std::fs::write(&file, "id = 1\ndata_dir = \"d\"\nraft_addr = \"r:1\"\nhttp_addr = \"h:1\"\n")
            .expect("write");
        let args = NodeArgs { config: Some(file), http_addr: Some("h:2".into()), ..NodeArgs::default() };
        let plan = node_plan(args).map_err(|e| e.to_string()).expect("plan");
        assert_eq!((plan.config.id, plan.config.raft_addr.as_str()), (1, "r:1"), "from the file");
        assert_eq!(plan.config.http_addr, "h:2", "the flag wins");
    }

    #[test]
    fn transport_tls_needs_all_three_files_and_valid_ones() {
        let dir = tempfile::tempdir().expect("tempdir");
        let half = NodeArgs { raft_tls_ca: Some(dir.path().join("ca.pem")), ..base() };
        let error = node_plan(half).expect_err("half a TLS configuration");
        assert!(error.contains("missing --raft-tls-cert, --raft-tls-key"), "{error}");
        let [ca, cert, key] = pki(dir.path());
        let whole = NodeArgs {
            raft_tls_ca: Some(ca.clone()),
            raft_tls_cert: Some(cert),
            raft_tls_key: Some(key.clone()),
            ..base()
        };
        assert!(node_plan(whole).expect("a whole TLS configuration").raft_tls.is_some());
        let wrong = NodeArgs {
            raft_tls_ca: Some(ca.clone()),
            raft_tls_cert: Some(ca),
            raft_tls_key: Some(key),
            ..base()
        };
        let error = node_plan(wrong).expect_err("a CA certificate with the node's key");
        assert!(error.contains("Raft transport TLS"), "{error}");
    }

    #[test]
    fn http_tls_users_and_cors_origins_refuse_a_bad_configuration() {
        let dir = tempfile::tempdir().expect("tempdir");
        let half = NodeArgs { http_tls_cert: Some(dir.path().join("cert.pem")), ..base() };
        let error = node_plan(half).expect_err("half an HTTP TLS configuration");
        assert!(error.contains("missing --http-tls-key, --http-tls-ca"), "{error}");
        let client_ca_only = NodeArgs { http_tls_client_ca: Some(dir.path().join("ca.pem")), ..base() };
        let error = node_plan(client_ca_only).expect_err("a client CA without a certificate");
        assert!(error.contains("missing --http-tls-cert, --http-tls-key, --http-tls-ca"), "{error}");
        let [ca, cert, key] = pki(dir.path());
        let whole = NodeArgs {
            http_tls_cert: Some(cert),
            http_tls_key: Some(key),
            http_tls_ca: Some(ca.clone()),
            http_tls_client_ca: Some(ca),
            ..base()
        };
        let plan = node_plan(whole).expect("a whole HTTP TLS configuration");
        assert!(plan.http_tls.is_some() && plan.join_client.tls.is_some());

        let users = dir.path().join("users.json");
        let hash = bcrypt::hash("pw", 4).expect("hash");
        let text = format!(
            r#"[{{"username": "a", "password": "pw", "perms": ["join"]}}, {{"username": "h", "password": "{hash}", "perms": ["join"]}}]"#
        );
        std::fs::write(&users, text).expect("write");
        let joining = || NodeArgs { join: Some("h:9".into()), ..base() };
        let error = node_plan(NodeArgs { join_as: Some("a".into()), ..joining() }).expect_err("no --auth");
        assert!(error.contains("--join-as needs --auth"), "{error}");
        let with =
            |user: &str| NodeArgs { join_as: Some(user.into()), auth: Some(users.clone()), ..joining() };
        let plan = node_plan(with("a")).expect("a plain password");
        assert_eq!(plan.join_client.authorization, Some(bop_raft::auth::basic_header("a", "pw")));
        let error = node_plan(with("h")).expect_err("a hashed password");
        assert!(error.contains("its password is a hash"), "{error}");
        for origin in ["*", "app.example.com", "ftp://x", "https://x/path", "https://"] {
            let args = NodeArgs { http_cors_origin: vec![origin.into()], ..base() };
            let error = node_plan(args).expect_err(origin);
            assert!(error.contains("--http-cors-origin"), "{error}");
        }
        for bad in ["soon", "500ms", "-1s"] {
            let error = node_plan(NodeArgs { remove_dead_after: Some(bad.into()), ..base() }).expect_err(bad);
            assert!(error.contains("--remove-dead-after"), "{error}");
        }
        for (what, args) in [
            ("--join", NodeArgs { force_new_cluster: true, join: Some("h:9".into()), ..base() }),
            (
                "--bootstrap",
                NodeArgs { force_new_cluster: true, bootstrap: Some("1=r:1/h:1".into()), ..base() },
            ),
        ] {
            let error = node_plan(args).expect_err(what);
            assert!(error.contains("--force-new-cluster"), "{what}: {error}");
        }
        assert!(node_plan(NodeArgs { force_new_cluster: true, ..base() }).expect("force").force_new_cluster);
        let plan = node_plan(NodeArgs { remove_dead_after: Some("72h".into()), ..base() }).expect("72h");
        assert_eq!(plan.remove_dead_after, Some(std::time::Duration::from_secs(72 * 3600)));
        assert_eq!(plan.pipeline_depth, 4, "pipelining is on by default");
        let plan = node_plan(NodeArgs { pipeline_depth: Some(1), ..base() }).expect("depth 1");
        assert_eq!(plan.pipeline_depth, 1);
        assert_eq!(plan.read_lease, None, "lease reads are off by default");
        let plan = node_plan(NodeArgs { read_lease: true, ..base() }).expect("lease");
        assert_eq!(plan.read_lease, Some(bop_raft::node::ReadLease { clock_drift_percent: 10 }));
        let error = node_plan(NodeArgs { clock_drift_max: Some(5), ..base() }).expect_err("drift alone");
        assert!(error.contains("--read-lease"), "{error}");
        let file = dir.path().join("depth.toml");
        std::fs::write(&file, "pipeline_depth = 65\n").expect("write");
        let error = node_plan(NodeArgs { config: Some(file), ..base() }).expect_err("depth 65");
        assert!(error.contains("pipeline_depth 65"), "{error}");
        let args = NodeArgs { http_cors_origin: vec!["https://app.example.com:8443".into()], ..base() };
        assert_eq!(node_plan(args).expect("an origin").cors_origins, ["https://app.example.com:8443"]);
        std::fs::write(&users, r#"[{"username": "a", "password": "pw", "perms": ["jion"]}]"#).expect("write");
        let error = node_plan(with("a")).expect_err("a misspelt permission");
        assert!(error.contains("unknown permission \"jion\""), "{error}");
    }

    #[test]
    fn members_parse_with_and_without_http_addresses() {
        let members = parse_members("1=a:1/b:1,2=a:2").expect("parse");
        assert_eq!(members[&1], "a:1 http=b:1");
        assert_eq!(members[&2], "a:2");
        assert!(parse_members("x=a:1").is_err());
        assert!(parse_members("1").is_err());
    }
}
