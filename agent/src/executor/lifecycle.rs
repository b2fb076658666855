//! A service's `post_start` and `pre_stop` commands around its container's start and
//! stop, run by `crate::hooks` through the exec helper.

use std::time::Duration;

use spec::model::Service;
use spec::task::Task;

use super::{stop_signal_and_grace, Executor, ExecutorError};
use crate::hooks;
use crate::shim;

impl Executor {
    /// Runs the service's `post_start` hooks in the container just started, in order.
    /// One that fails stops the container (its stop signal and grace period, without
    /// `pre_stop`): the task failed to start, and its error names the hook. A container
    /// that exited meanwhile runs none, and its status says how it ended.
    pub(super) fn post_start(&self, task: &Task, service: &Service) -> Result<(), ExecutorError> {
        let shim_root = self.shim_root();
        let target = hooks::Target {
            shim: &self.shim,
            shim_root: &shim_root,
            id: &task.id,
            service: &task.service,
            phase: hooks::Phase::PostStart,
        };
        for (i, hook) in service.post_start.iter().enumerate() {
            match hooks::run(target, i, hook, None) {
                Ok(()) => {}
                Err(e) if e.not_running() => return Ok(()),
                Err(e) => {
                    self.leave(&task.id);
                    let asked = task.stop_grace_ms.map(Duration::from_millis);
                    let (signal, grace) = stop_signal_and_grace(Some(service), asked);
                    let _ = shim::stop(&shim_root, &task.id, signal, grace);
                    self.release(&task.id);
                    return Err(ExecutorError::Hook(e));
                }
            }
        }
        Ok(())
    }

    /// Runs the service's `pre_stop` hooks in the running container of `task`, in
    /// order, all within `grace` (a hook still running then is killed, and the rest
    /// skipped). A hook that fails is logged and the next one runs: the stop goes on.
    pub(super) fn pre_stop(&self, task: &Task, service: &Service, grace: Duration) {
        let shim_root = self.shim_root();
        let target = hooks::Target {
            shim: &self.shim,
            shim_root: &shim_root,
            id: &task.id,
            service: &task.service,
            phase: hooks::Phase::PreStop,
        };
        let deadline = std::time::Instant::now() + grace;
        for (i, hook) in service.pre_stop.iter().enumerate() {
            let left = deadline.saturating_duration_since(std::time::Instant::now());
            if left.is_zero() {
                eprintln!(
                    "berth daemon: container {} ({}): services.{}.pre_stop[{i}] and after: \
                     skipped, the stop grace period ({grace:?}) is over",
                    task.name(),
                    task.id,
                    task.service
                );
                return;
            }
            match hooks::run(target, i, hook, Some(left)) {
                Ok(()) => {}
                // It exited meanwhile: nothing left to prepare for its stop.
                Err(e) if e.not_running() => return,
                Err(e) => eprintln!(
                    "berth daemon: container {} ({}): {e}; stopping it anyway",
                    task.name(),
                    task.id
                ),
            }
        }
    }
}
