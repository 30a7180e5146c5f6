//! Capturing a worker's panic with its context (payload, location, backtrace), so the store can be
//! poisoned with an error that says what happened instead of a bare string.

use std::backtrace::Backtrace;
use std::cell::{Cell, RefCell};
use std::panic::{AssertUnwindSafe, PanicHookInfo};
use std::sync::Once;

/// What a caught panic said and where it came from.
#[derive(Debug, Clone)]
pub struct PanicContext {
    /// The panic message (payload), or a placeholder for a non-string payload.
    pub message: String,
    /// `file:line:column` of the panic, when known.
    pub location: Option<String>,
    /// The backtrace captured at the panic, rendered.
    pub backtrace: Option<String>,
    /// The thread that panicked.
    pub thread: String,
}

impl std::fmt::Display for PanicContext {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "panic in thread '{}': {}", self.thread, self.message)?;
        if let Some(location) = &self.location {
            write!(f, " at {location}")?;
        }
        Ok(())
    }
}

thread_local! {
    static CAPTURING: Cell<bool> = const { Cell::new(false) };
    static CAPTURED: RefCell<Option<(Option<String>, String)>> = const { RefCell::new(None) };
}

static HOOK: Once = Once::new();

fn install_hook() {
    HOOK.call_once(|| {
        let previous = std::panic::take_hook();
        std::panic::set_hook(Box::new(move |info: &PanicHookInfo<'_>| {
            if CAPTURING.with(Cell::get) {
                let location = info.location().map(|l| format!("{}:{}:{}", l.file(), l.line(), l.column()));
                let backtrace = Backtrace::force_capture().to_string();
                CAPTURED.with(|c| *c.borrow_mut() = Some((location, backtrace)));
            }
            previous(info);
        }));
    });
}

fn payload_message(payload: &(dyn std::any::Any + Send)) -> String {
    if let Some(s) = payload.downcast_ref::<&str>() {
        (*s).to_owned()
    } else if let Some(s) = payload.downcast_ref::<String>() {
        s.clone()
    } else {
        "<non-string panic payload>".to_owned()
    }
}

/// Runs `f`, turning a panic into a [`PanicContext`] with location and backtrace.
pub fn catch<R>(f: impl FnOnce() -> R) -> Result<R, PanicContext> {
    install_hook();
    let was = CAPTURING.with(|c| c.replace(true));
    let result = std::panic::catch_unwind(AssertUnwindSafe(f));
    CAPTURING.with(|c| c.set(was));
    result.map_err(|payload| {
        let (location, backtrace) = CAPTURED.with(|c| c.borrow_mut().take()).unzip();
        PanicContext {
            message: payload_message(payload.as_ref()),
            location: location.flatten(),
            backtrace,
            thread: std::thread::current().name().unwrap_or("<unnamed>").to_owned(),
        }
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn panic_context_has_message_location_and_backtrace() {
        let err = catch(|| panic!("boom {}", 7)).expect_err("panicked");
        assert_eq!(err.message, "boom 7");
        assert!(err.location.as_deref().is_some_and(|l| l.contains("panic.rs")), "{err:?}");
        assert!(err.backtrace.is_some());
        assert_eq!(catch(|| 5).expect("no panic"), 5);
    }
}
