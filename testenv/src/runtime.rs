//! Running async start-up code from synchronous functions.

use anyhow::{Context, Result, anyhow};

/// Runs `future` to completion on a private runtime on its own thread.
///
/// The synchronous entry points ([`crate::ControlPlane::start`],
/// [`crate::ControlPlane::shared`]) are called from inside `#[tokio::test]`s,
/// where building a runtime on the calling thread would panic ("Cannot start a
/// runtime from within a runtime").
pub(crate) fn block_on<F>(future: F) -> Result<F::Output>
where
    F: Future + Send,
    F::Output: Send,
{
    std::thread::scope(|scope| {
        scope
            .spawn(|| {
                let runtime = tokio::runtime::Builder::new_current_thread()
                    .enable_all()
                    .build()
                    .context("cannot build a tokio runtime")?;
                Ok(runtime.block_on(future))
            })
            .join()
            .map_err(|_| anyhow!("the start-up thread panicked"))?
    })
}
