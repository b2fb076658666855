//! The way into a node's driver thread: the [`Input`]s it is asked to handle (from the
//! handle, `node.rs`) and the [`Inbox`] a transport delivers peers' messages to.

use std::sync::mpsc;

use raft::eraftpb::{ConfChangeV2, ConfState, Message};
use tokio::sync::oneshot;

use super::error::NodeError;

/// What the driver thread is asked to do.
#[derive(Debug)]
pub(super) enum Input {
    Message(Box<Message>),
    Propose {
        command: Vec<u8>,
        reply: oneshot::Sender<Result<Vec<u8>, NodeError>>,
    },
    ConfChange {
        cc: ConfChangeV2,
        reply: oneshot::Sender<Result<ConfState, NodeError>>,
    },
    ReadIndex {
        reply: oneshot::Sender<Result<u64, NodeError>>,
    },
    Stop,
}

/// Where a transport delivers a node's incoming messages.
#[derive(Debug, Clone)]
pub struct Inbox {
    tx: mpsc::Sender<Input>,
}

impl Inbox {
    /// The inbox of the driver thread that receives from `tx`'s channel.
    pub(super) fn new(tx: mpsc::Sender<Input>) -> Inbox {
        Inbox { tx }
    }

    /// Hands `msg` to the node; false if the node has stopped.
    pub fn deliver(&self, msg: Message) -> bool {
        self.tx.send(Input::Message(Box::new(msg))).is_ok()
    }
}
