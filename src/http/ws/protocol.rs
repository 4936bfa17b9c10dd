//! The WebSocket's JSON protocol (SPEC §5.2): the text frames a client sends
//! and the ones the session answers with. Event frames are not here: the
//! run actor encodes each event's once (`runsignal_actors::subscriber::ws_frames`).

use runsignal_actors::StreamKind;
use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};

use crate::http::errors::{ApiError, ErrorCode};
use crate::http::extract::{job_id, run_id};

/// A client text frame: `{"op": "auth" | "subscribe" | "unsubscribe" | "ping", …}`.
#[derive(Debug)]
pub enum ClientFrame {
    Auth(AuthArgs),
    Subscribe(SubscribeArgs),
    Unsubscribe(UnsubscribeArgs),
    Ping,
}

impl ClientFrame {
    /// Parse one text frame; the error names what is wrong with it.
    pub fn parse(text: &str) -> Result<ClientFrame, ApiError> {
        let invalid = |detail: String| ApiError::new(ErrorCode::InvalidBody, detail);
        let mut fields = match serde_json::from_str::<Map<String, Value>>(text) {
            Ok(fields) => fields,
            // Well-formed JSON, but not an object.
            Err(e) if e.is_data() => {
                return Err(invalid("a message is a JSON object with an `op`".into()))
            }
            Err(e) => return Err(invalid(format!("malformed JSON: {e}"))),
        };
        let op = match fields.remove("op") {
            Some(Value::String(op)) => op,
            _ => {
                return Err(invalid(
                    "field `op` is required: subscribe, unsubscribe or ping".into(),
                ))
            }
        };
        let args = Value::Object(fields);
        match op.as_str() {
            "auth" => op_args(args).map(ClientFrame::Auth),
            "subscribe" => op_args(args).map(ClientFrame::Subscribe),
            "unsubscribe" => op_args(args).map(ClientFrame::Unsubscribe),
            "ping" => Ok(ClientFrame::Ping),
            other => Err(ApiError::new(
                ErrorCode::UnknownOp,
                format!("unknown op `{other}`; expected auth, subscribe, unsubscribe or ping"),
            )),
        }
    }
}

/// `{"op":"auth","token","tenant"?}`: the first frame of a socket whose
/// handshake carried no credential.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AuthArgs {
    pub token: String,
    /// The tenant to act for (else the handshake's, else the credential's
    /// only one).
    pub tenant: Option<String>,
}

/// Never prints the token.
impl std::fmt::Debug for AuthArgs {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("AuthArgs")
            .field("token", &"<redacted>")
            .field("tenant", &self.tenant)
            .finish()
    }
}

/// `{"op":"subscribe","stream","id","after"?,"events"?,"correlationId"?}`.
#[derive(Debug, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct SubscribeArgs {
    pub stream: String,
    pub id: String,
    /// Resume after this seq (as `Last-Event-ID`).
    pub after: Option<u64>,
    /// Stream event names to keep.
    pub events: Option<Vec<String>>,
    pub correlation_id: Option<String>,
}

/// `{"op":"unsubscribe","stream","id"}`.
#[derive(Debug, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct UnsubscribeArgs {
    pub stream: String,
    pub id: String,
}

/// A message's fields (without `op`), errors naming the field.
fn op_args<T: DeserializeOwned>(args: Value) -> Result<T, ApiError> {
    serde_path_to_error::deserialize(args).map_err(|e| {
        let path = e.path().to_string();
        let inner = e.into_inner();
        let detail = if path == "." {
            inner.to_string()
        } else {
            format!("field `{path}`: {inner}")
        };
        ApiError::new(ErrorCode::InvalidField, detail)
    })
}

/// The stream kind and normalized id a message names.
pub fn stream_and_id(stream: &str, id: &str) -> Result<(StreamKind, String), ApiError> {
    let kind = StreamKind::parse(stream).ok_or_else(|| {
        ApiError::new(
            ErrorCode::UnknownStream,
            format!("unknown stream `{stream}`; expected run, job or pack-run"),
        )
    })?;
    let id = match kind {
        StreamKind::Run => run_id(id)?,
        StreamKind::Job | StreamKind::PackRun => job_id(id)?,
    };
    Ok((kind, id))
}

/// A frame the session writes (besides the run actors' event frames).
#[derive(Debug, Serialize)]
#[serde(tag = "op", rename_all = "lowercase")]
pub enum ServerFrame<'a> {
    /// The subscription is registered; `completed`: `after` already covers
    /// the stream's end, no frames follow for it.
    Subscribed {
        stream: &'a str,
        id: &'a str,
        #[serde(rename = "liveFrom")]
        live_from: u64,
        #[serde(skip_serializing_if = "std::ops::Not::not")]
        completed: bool,
    },
    Unsubscribed {
        stream: &'a str,
        id: &'a str,
    },
    Pong,
    /// The `auth` frame was accepted: the socket acts for `tenant`.
    Authenticated {
        tenant: &'a str,
    },
    /// Never closes the socket; `stream` and `id` when it concerns one
    /// subscription, `after` the seq a dropped one resumes after.
    Error {
        code: ErrorCode,
        detail: &'a str,
        #[serde(skip_serializing_if = "Option::is_none")]
        stream: Option<&'a str>,
        #[serde(skip_serializing_if = "Option::is_none")]
        id: Option<&'a str>,
        #[serde(skip_serializing_if = "Option::is_none")]
        after: Option<u64>,
    },
}

impl<'a> ServerFrame<'a> {
    /// An error frame, about one subscription when `stream` is given.
    pub fn error(e: &'a ApiError, stream: Option<(StreamKind, &'a str)>) -> ServerFrame<'a> {
        ServerFrame::Error {
            code: e.code,
            detail: &e.detail,
            stream: stream.map(|(kind, _)| kind.as_str()),
            id: stream.map(|(_, id)| id),
            after: None,
        }
    }

    pub fn encode(&self) -> String {
        // Strings and integers only: serializing cannot fail.
        serde_json::to_string(self).expect("a server frame serializes")
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn client_frames_parse_or_name_the_problem() {
        assert!(matches!(
            ClientFrame::parse(r#"{"op":"ping","x":1}"#),
            Ok(ClientFrame::Ping)
        ));
        let Ok(ClientFrame::Subscribe(args)) =
            ClientFrame::parse(r#"{"op":"subscribe","stream":"run","id":"r","after":3}"#)
        else {
            panic!("a subscribe frame parses");
        };
        assert_eq!((args.stream.as_str(), args.after), ("run", Some(3)));
        for (text, code) in [
            ("nope", "invalid_body"),
            ("[1]", "invalid_body"),
            (r#"{"stream":"run"}"#, "invalid_body"),
            (r#"{"op":"dance"}"#, "unknown_op"),
            (r#"{"op":"subscribe","stream":"run"}"#, "invalid_field"),
            (
                r#"{"op":"unsubscribe","stream":"run","id":"r","x":1}"#,
                "invalid_field",
            ),
        ] {
            assert_eq!(
                ClientFrame::parse(text).err().map(|e| e.code.as_str()),
                Some(code),
                "{text}"
            );
        }
    }

    #[test]
    fn server_frames_keep_their_wire_shape() {
        let frame = |f: ServerFrame| serde_json::from_str::<Value>(&f.encode()).unwrap();
        assert_eq!(frame(ServerFrame::Pong), json!({"op": "pong"}));
        assert_eq!(
            frame(ServerFrame::Subscribed {
                stream: "run",
                id: "r",
                live_from: 4,
                completed: false
            }),
            json!({"op": "subscribed", "stream": "run", "id": "r", "liveFrom": 4})
        );
        assert_eq!(
            frame(ServerFrame::error(
                &ApiError::new(ErrorCode::AlreadySubscribed, "d"),
                Some((StreamKind::Job, "j"))
            )),
            json!({"op": "error", "code": "already_subscribed", "detail": "d", "stream": "job", "id": "j"})
        );
    }
}
