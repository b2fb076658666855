//! What a node serves about itself, beyond its tasks' statuses: a container's logs,
//! signals, freezing, processes, ports and resource use, a command run in it (exec),
//! and the removal of a stack's networks and volumes from this node. The API (`manager::api::NodeAgent`, implemented by
//! the binary over [`LocalNode`]) turns these into HTTP answers.

use std::path::PathBuf;

use spec::model::Stack;

use crate::executor::{Executor, ExecutorError};
use crate::shim::{self, LogEntry, LogOptions, ShimError};

/// Why the node could not serve a request about one of its containers or stacks.
#[derive(Debug, thiserror::Error)]
pub enum NodeError {
    #[error(transparent)]
    Shim(#[from] ShimError),
    #[error(transparent)]
    Executor(#[from] ExecutorError),
    #[error(transparent)]
    Json(#[from] serde_json::Error),
    #[error("network {name}: {source}")]
    RemoveNetwork {
        name: String,
        #[source]
        source: overlay_net::NetError,
    },
    /// A store written before the API checked names may hold one that is not a plain
    /// name: it names no directory of ours.
    #[error("volume {key}: {name:?} is not a volume name, so it was left alone")]
    NotAVolumeName { key: String, name: String },
    #[error("remove volume {name}: {source}")]
    RemoveVolume {
        name: String,
        #[source]
        source: std::io::Error,
    },
}

/// This node's containers and stack resources, as the API sees them.
#[derive(Debug, Clone)]
pub struct LocalNode {
    pub executor: Executor,
}

impl LocalNode {
    pub fn new(executor: Executor) -> LocalNode {
        LocalNode { executor }
    }

    /// Calls `sink` with each log entry of container `task`, following new ones while
    /// `follow` and the container runs; stops early (and without error) when `sink`
    /// returns false.
    pub fn logs(
        &self,
        task: &str,
        follow: bool,
        tail: Option<usize>,
        sink: &mut dyn FnMut(&LogEntry) -> bool,
    ) -> Result<(), NodeError> {
        let opts = LogOptions { follow, tail };
        let mut write = |e: &LogEntry| {
            if sink(e) {
                Ok(())
            } else {
                Err(std::io::Error::from(std::io::ErrorKind::BrokenPipe))
            }
        };
        match shim::logs(&self.executor.shim_root(), task, opts, &mut write) {
            Ok(()) => Ok(()),
            Err(ShimError::Io { source, .. })
                if source.kind() == std::io::ErrorKind::BrokenPipe =>
            {
                Ok(())
            }
            Err(e) => Err(e.into()),
        }
    }

    /// Sends `signal` (a name or number) to the main process of container `task`; a
    /// container that does not run is left as it is.
    pub fn kill(&self, task: &str, signal: &str) -> Result<(), NodeError> {
        let signal = shim::parse_signal(signal)?;
        match shim::kill(&self.executor.shim_root(), task, signal) {
            Ok(()) | Err(ShimError::NotRunning { .. }) => Ok(()),
            Err(e) => Err(e.into()),
        }
    }

    /// Freezes or thaws a container's processes.
    pub fn freeze(&self, task: &str, frozen: bool) -> Result<(), NodeError> {
        Ok(self.executor.freeze(task, frozen)?)
    }

    /// A container's processes (`top`), published ports (`ports`), or else its
    /// resource use, as JSON.
    pub fn inspect(&self, task: &str, what: &str) -> Result<serde_json::Value, NodeError> {
        let value = match what {
            "top" => serde_json::to_value(self.executor.top(task)?)?,
            "ports" => serde_json::to_value(
                self.executor
                    .net
                    .as_ref()
                    .map(|n| n.published(task))
                    .unwrap_or_default(),
            )?,
            _ => {
                let s = self.executor.stats(task)?;
                serde_json::json!({ "memory_bytes": s.memory_bytes, "cpu_nanos": s.cpu_nanos })
            }
        };
        Ok(value)
    }

    /// Starts `req` in running container `task` through the exec helper (never from
    /// this process: `shim::enter` says why), with `stdio` as its standard streams.
    pub fn exec(
        &self,
        task: &str,
        req: &shim::ExecRequest,
        stdio: shim::ExecStdio,
    ) -> Result<shim::ExecSession, ShimError> {
        shim::exec(
            &self.executor.shim,
            &self.executor.shim_root(),
            task,
            req,
            stdio,
        )
    }

    /// Deletes the stack's networks (not external ones) from this node; returns their
    /// names.
    pub fn remove_networks(&self, stack: &Stack) -> Result<Vec<String>, NodeError> {
        let Some(net) = &self.executor.net else {
            return Ok(Vec::new());
        };
        let mut removed = Vec::new();
        for (key, n) in &stack.networks {
            if n.external {
                continue;
            }
            let name = if n.name.is_empty() {
                format!("{}_{key}", stack.name)
            } else {
                n.name.clone()
            };
            if net.networks().iter().any(|i| i.name == name) {
                net.remove_network(&name)
                    .map_err(|source| NodeError::RemoveNetwork {
                        name: name.clone(),
                        source,
                    })?;
                removed.push(name);
            }
        }
        Ok(removed)
    }

    /// Deletes the stack's named volumes that it does not mark external; returns their
    /// names.
    pub fn remove_volumes(&self, stack: &Stack) -> Result<Vec<String>, NodeError> {
        let mut removed = Vec::new();
        for (key, v) in &stack.volumes {
            if v.external {
                continue;
            }
            let name = if v.name.is_empty() {
                key.clone()
            } else {
                v.name.clone()
            };
            // The API checks names as it takes a stack; a store written before it
            // did may still hold one that is not a plain name.
            if !spec::names::is_resource_name(&name) {
                return Err(NodeError::NotAVolumeName {
                    key: key.clone(),
                    name,
                });
            }
            let dir = self.volume_dir(&name);
            match std::fs::remove_dir_all(&dir) {
                Ok(()) => removed.push(name),
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
                Err(source) => return Err(NodeError::RemoveVolume { name, source }),
            }
        }
        Ok(removed)
    }

    fn volume_dir(&self, name: &str) -> PathBuf {
        self.executor.state_dir.join("volumes").join(name)
    }
}
