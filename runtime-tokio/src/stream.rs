//! A `Stream` over a bounded mpsc receiver, for gRPC streaming bodies. Written here
//! rather than taken from tokio-stream, which would pull real tokio into simulation
//! builds.

use futures_core::Stream;
use std::pin::Pin;
use std::task::{Context, Poll};
use tokio::sync::mpsc;

/// Yields what the paired sender sends; ends when every sender is dropped.
#[derive(Debug)]
pub(crate) struct ChannelStream<T>(pub mpsc::Receiver<T>);

impl<T> Stream for ChannelStream<T> {
    type Item = T;

    fn poll_next(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<T>> {
        self.0.poll_recv(cx)
    }
}
