//! The listener: one connection that `LISTEN`s on the `writ` channel and turns notifications
//! into [`Notice`]s for the server.
//!
//! Notifications are a hint, never the record: when the listening connection drops, changes
//! committed meanwhile are not announced, so after every (re)connect the listener sends
//! [`Notice::Resync`] and readers catch up from the revision log and reload the rest.

use std::future::Future;
use std::time::Duration;

use tokio::sync::broadcast;
use tokio_postgres::{AsyncMessage, Config};

use crate::Notice;

/// Longest wait between reconnect attempts.
const MAX_BACKOFF: Duration = Duration::from_secs(5);

/// Parses a notification payload (see `records.rs` for the vocabulary).
pub(crate) fn parse(payload: &str) -> Option<Notice> {
    let (kind, arg) = payload.split_once(' ').unwrap_or((payload, ""));
    Some(match kind {
        "e" => Notice::Entries,
        "n" if !arg.is_empty() => Notice::Node(arg.to_owned()),
        "b" if !arg.is_empty() => Notice::Bundle(arg.to_owned()),
        "r" => Notice::Revocations,
        "f" => Notice::Federations,
        "a" => Notice::Authorities,
        _ => return None,
    })
}

/// Starts the listener on `rt`; it runs until the runtime is dropped.
pub(crate) fn spawn(
    rt: &tokio::runtime::Handle,
    cfg: Config,
    tls: super::tls::Tls,
    out: broadcast::Sender<Notice>,
) {
    rt.spawn(async move {
        let mut backoff = Duration::from_millis(100);
        let mut first = true;
        loop {
            match tls.connect(&cfg).await {
                Ok((client, mut conn)) => {
                    // The connection must be polled for the LISTEN to complete; drive both.
                    let listen = client.batch_execute("LISTEN writ");
                    let mut listen = std::pin::pin!(listen);
                    let mut listening = false;
                    loop {
                        let msg = std::future::poll_fn(|cx| {
                            if !listening {
                                if let std::task::Poll::Ready(r) = listen.as_mut().poll(cx) {
                                    listening = true;
                                    return std::task::Poll::Ready(Some(r.map(|_| None)));
                                }
                            }
                            conn.poll_message(cx).map(|m| m.map(|r| r.map(Some)))
                        })
                        .await;
                        match msg {
                            Some(Ok(None)) => {
                                backoff = Duration::from_millis(100);
                                if !first {
                                    tracing::info!("listening for PostgreSQL notifications again; catching up");
                                }
                                first = false;
                                let _ = out.send(Notice::Resync);
                            }
                            Some(Ok(Some(AsyncMessage::Notification(n)))) => {
                                if let Some(notice) = parse(n.payload()) {
                                    let _ = out.send(notice);
                                }
                            }
                            Some(Ok(Some(_))) => {}
                            Some(Err(e)) => {
                                tracing::warn!(error = %super::pg_reason(&e), "PostgreSQL notification connection failed");
                                break;
                            }
                            None => {
                                tracing::warn!("PostgreSQL notification connection closed");
                                break;
                            }
                        }
                    }
                }
                Err(e) => {
                    tracing::warn!(error = %super::pg_reason(&e), "cannot connect to PostgreSQL to listen for changes");
                }
            }
            tokio::time::sleep(backoff).await;
            backoff = (backoff * 2).min(MAX_BACKOFF);
        }
    });
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn payloads() {
        assert_eq!(parse("e 12"), Some(Notice::Entries));
        assert_eq!(
            parse("n spiffe://td/a"),
            Some(Notice::Node("spiffe://td/a".into()))
        );
        assert_eq!(parse("n"), None);
        assert_eq!(parse("zz"), None);
        assert_eq!(parse("a"), Some(Notice::Authorities));
    }
}
