//! The query API (CONTRACT.md §5): receipts, member lists and read marks,
//! answered from the worker's own state. Every error is a 4xx (or 503 while
//! not ready) with `{"error":{"code":..,"message":..}}`.

use crate::{error, Shared};
use axum::extract::rejection::{JsonRejection, PathRejection, QueryRejection};
use axum::extract::{Path, Query, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::Json;
use receiptd_core::{MemberFilter, PartitionView, QueryRefusal};
use receiptd_wire::Receipt;
use receiptd_wire::{Conversation, MAX_ID_BYTES};
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;
use std::hash::{Hash, Hasher};
use std::sync::Arc;
use utoipa::openapi::security::{HttpAuthScheme, HttpBuilder, SecurityScheme};
use utoipa::{IntoParams, Modify, OpenApi, ToSchema};

/// Most messages in one `receipts/query`.
const MAX_QUERY_MESSAGES: usize = 100;

/// What the API handlers share.
#[derive(Clone)]
pub struct Api {
    /// The worker.
    pub shared: Arc<Shared>,
    /// app id -> bearer token.
    pub tokens: Arc<BTreeMap<String, String>>,
}

fn bad_request(message: impl Into<String>) -> Response {
    error(StatusCode::BAD_REQUEST, "invalid_request", &message.into())
}

/// An extractor's rejection, as the contract's JSON error.
fn rejected(status: StatusCode, text: String) -> Response {
    let code = match status {
        StatusCode::PAYLOAD_TOO_LARGE => "payload_too_large",
        StatusCode::UNSUPPORTED_MEDIA_TYPE => "unsupported_media_type",
        _ => "invalid_request",
    };
    let status = if status.is_client_error() { status } else { StatusCode::BAD_REQUEST };
    error(status, code, &text)
}

fn check_id(field: &str, value: &str) -> Result<(), Response> {
    if value.is_empty() || value.len() > MAX_ID_BYTES {
        return Err(bad_request(format!("`{field}` must be 1 to {MAX_ID_BYTES} bytes")));
    }
    Ok(())
}

/// Equal-time comparison: the time taken does not depend on where the
/// inputs differ.
fn same_secret(a: &[u8], b: &[u8]) -> bool {
    let mut diff = (a.len() ^ b.len()) as u8 | u8::from(a.len() != b.len());
    for (i, x) in a.iter().enumerate() {
        diff |= x ^ b.get(i).copied().unwrap_or(0);
    }
    diff == 0
}

/// 401 without a valid token, 403 with another app's token.
fn authorize(api: &Api, headers: &HeaderMap, app_id: &str) -> Result<(), Response> {
    let presented = headers
        .get(axum::http::header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Bearer "))
        .map(str::trim);
    let Some(presented) = presented else {
        return Err(error(StatusCode::UNAUTHORIZED, "unauthorized", "missing bearer token"));
    };
    // Compare against every token, so timing says nothing about which matched.
    let mut owner = None;
    for (app, token) in api.tokens.iter() {
        if same_secret(presented.as_bytes(), token.as_bytes()) {
            owner = Some(app.as_str());
        }
    }
    match owner {
        Some(app) if app == app_id => Ok(()),
        Some(_) => Err(error(StatusCode::FORBIDDEN, "forbidden", "the token belongs to another app")),
        None => Err(error(StatusCode::UNAUTHORIZED, "unauthorized", "invalid bearer token")),
    }
}

/// The common start of the GET handlers: path, token, then parameters.
fn admit<Q>(
    api: &Api,
    path: Result<Path<(String, String, String)>, PathRejection>,
    params: Result<Query<Q>, QueryRejection>,
    headers: &HeaderMap,
) -> Result<((String, String, String), Q), Response> {
    let Path(path) = path.map_err(|r| rejected(r.status(), r.body_text()))?;
    authorize(api, headers, &path.0)?;
    let Query(params) = params.map_err(|r| rejected(r.status(), r.body_text()))?;
    Ok((path, params))
}

fn query<R>(
    api: &Api,
    f: impl FnOnce(&receiptd_core::SettingsTable, &[Arc<PartitionView>]) -> R,
) -> Result<R, Response> {
    if api.shared.readiness().is_err() {
        return Err(error(StatusCode::SERVICE_UNAVAILABLE, "not_ready", "state is not restored yet"));
    }
    let (mut f, mut answer) = (Some(f), None);
    api.shared.view(&mut |settings, states| {
        if let Some(f) = f.take() {
            answer = Some(f(settings, states));
        }
    });
    answer.ok_or_else(|| error(StatusCode::SERVICE_UNAVAILABLE, "not_ready", "the worker is not running"))
}

fn refusal(r: QueryRefusal) -> Response {
    let status = match r {
        QueryRefusal::NotFound => StatusCode::NOT_FOUND,
        QueryRefusal::Forbidden | QueryRefusal::ReceiptsDisabled => StatusCode::FORBIDDEN,
    };
    let message = match r {
        QueryRefusal::NotFound => "no such message with receipts here",
        QueryRefusal::Forbidden => "only the message's sender sees its receipts",
        QueryRefusal::ReceiptsDisabled => "the requester's read receipts are off",
    };
    error(status, r.code(), message)
}

fn check_conversation(c: &Conversation) -> Result<(), Response> {
    match c {
        Conversation::C2c { peer } => check_id("conversation.peer", peer),
        Conversation::Group { group_id } => check_id("conversation.group_id", group_id),
    }
}

/// Body of `POST /v1/apps/{app_id}/receipts/query`.
#[derive(Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct ReceiptsQuery {
    /// The user on whose behalf the chat backend asks; must be the sender.
    requester: String,
    /// 1 to 100 messages.
    messages: Vec<MessageRef>,
}

/// One message asked about.
#[derive(Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct MessageRef {
    msg_id: String,
    /// The message's conversation, relative to the requester.
    #[schema(value_type = ConversationDoc)]
    conversation: Conversation,
}

/// The schema of [`Conversation`] (whose serde form is written by hand).
#[derive(ToSchema)]
#[serde(tag = "type", rename_all = "snake_case")]
#[allow(dead_code)]
pub enum ConversationDoc {
    /// One-to-one; `peer` is the other party.
    C2c { peer: String },
    /// A group.
    Group { group_id: String },
}

/// Answer of `receipts/query`.
#[derive(Serialize, ToSchema)]
pub struct ReceiptsAnswer {
    receipts: Vec<Receipt>,
    errors: Vec<MessageError>,
}

/// A message that has no receipt for the requester.
#[derive(Serialize, ToSchema)]
pub struct MessageError {
    msg_id: String,
    /// `not_found`, `forbidden` or `receipts_disabled`.
    code: String,
}

/// One member of a list.
#[derive(Serialize, ToSchema)]
pub struct Member {
    user_id: String,
    /// When the member read the message (read lists only).
    #[serde(skip_serializing_if = "Option::is_none")]
    read_at: Option<u64>,
}

/// A page of a member list.
#[derive(Serialize, ToSchema)]
pub struct MemberPageAnswer {
    members: Vec<Member>,
    /// Pass back as `cursor` for the next page; empty when finished.
    next_cursor: String,
    is_finished: bool,
}

/// A peer's conversation-read mark.
#[derive(Serialize, ToSchema)]
pub struct ReadMarkAnswer {
    peer: String,
    /// Unix ms; 0 when the peer has no revealed mark.
    timestamp: u64,
}

/// Every error body.
#[derive(Serialize, ToSchema)]
pub struct ErrorBody {
    error: ErrorDetail,
}

/// The error's code and message.
#[derive(Serialize, ToSchema)]
pub struct ErrorDetail {
    code: String,
    message: String,
}

/// Receipts of up to 100 messages, as their sender may see them.
#[utoipa::path(
    post,
    path = "/v1/apps/{app_id}/receipts/query",
    params(("app_id" = String, Path, description = "The app")),
    request_body = ReceiptsQuery,
    responses(
        (status = 200, description = "Receipts, and an error per message without one", body = ReceiptsAnswer),
        (status = 400, description = "Bad request", body = ErrorBody),
        (status = 401, description = "Missing or wrong token", body = ErrorBody),
        (status = 403, description = "Another app's token", body = ErrorBody),
        (status = 413, description = "Body too large", body = ErrorBody),
        (status = 503, description = "Not ready", body = ErrorBody),
    ),
    security(("bearer" = []))
)]
pub async fn receipts(
    State(api): State<Api>,
    path: Result<Path<String>, PathRejection>,
    headers: HeaderMap,
    body: Result<Json<ReceiptsQuery>, JsonRejection>,
) -> Response {
    let Path(app_id) = match path {
        Ok(p) => p,
        Err(r) => return rejected(r.status(), r.body_text()),
    };
    if let Err(r) = authorize(&api, &headers, &app_id) {
        return r;
    }
    let Json(body) = match body {
        Ok(b) => b,
        Err(r) => return rejected(r.status(), r.body_text()),
    };
    if let Err(r) = check_id("requester", &body.requester) {
        return r;
    }
    if body.messages.is_empty() || body.messages.len() > MAX_QUERY_MESSAGES {
        return bad_request(format!("`messages` must name 1 to {MAX_QUERY_MESSAGES} messages"));
    }
    for m in &body.messages {
        if let Err(r) = check_id("messages[].msg_id", &m.msg_id).and_then(|_| check_conversation(&m.conversation)) {
            return r;
        }
    }
    let answer = query(&api, |settings, states| {
        let mut answer = ReceiptsAnswer { receipts: Vec::new(), errors: Vec::new() };
        for m in &body.messages {
            let found = states.iter().find(|s| s.contains_message(&app_id, &m.msg_id));
            let result = match found {
                Some(s) => s.receipt(settings, &app_id, &m.msg_id, &body.requester, &m.conversation),
                None => Err(QueryRefusal::NotFound),
            };
            match result {
                Ok(r) => answer.receipts.push(r),
                Err(e) => answer.errors.push(MessageError { msg_id: m.msg_id.clone(), code: e.code().into() }),
            }
        }
        answer
    });
    match answer {
        Ok(a) => Json(a).into_response(),
        Err(r) => r,
    }
}

/// Query parameters of a member list.
#[derive(Deserialize, IntoParams)]
#[serde(deny_unknown_fields)]
#[into_params(parameter_in = Query)]
pub struct MembersParams {
    /// `read` or `unread` (required).
    filter: Option<String>,
    /// Opaque; from the previous page's `next_cursor`.
    cursor: Option<String>,
    /// 1 to 1000; default 100.
    count: Option<String>,
    /// The message's sender (required).
    requester: Option<String>,
}

/// The opaque cursor: the last ordinal listed, bound by a checksum to the
/// list it belongs to, so that a forged or foreign cursor is refused.
fn cursor_check(app: &str, group: &str, msg: &str, filter: MemberFilter, ordinal: u32) -> u32 {
    let mut h = std::collections::hash_map::DefaultHasher::new();
    ("receiptd-cursor-v1", app, group, msg, filter == MemberFilter::Read, ordinal).hash(&mut h);
    h.finish() as u32
}

fn encode_cursor(app: &str, group: &str, msg: &str, filter: MemberFilter, ordinal: u32) -> String {
    format!("{ordinal:08x}{:08x}", cursor_check(app, group, msg, filter, ordinal))
}

fn decode_cursor(cursor: &str, app: &str, group: &str, msg: &str, filter: MemberFilter) -> Option<u32> {
    if cursor.len() != 16 || !cursor.bytes().all(|b| b.is_ascii_hexdigit()) {
        return None;
    }
    let ordinal = u32::from_str_radix(&cursor[..8], 16).ok()?;
    let check = u32::from_str_radix(&cursor[8..], 16).ok()?;
    (check == cursor_check(app, group, msg, filter, ordinal)).then_some(ordinal)
}

/// A page of a group message's read or unread members, in a stable order.
#[utoipa::path(
    get,
    path = "/v1/apps/{app_id}/groups/{group_id}/messages/{msg_id}/members",
    params(
        ("app_id" = String, Path, description = "The app"),
        ("group_id" = String, Path, description = "The group"),
        ("msg_id" = String, Path, description = "The message"),
        MembersParams,
    ),
    responses(
        (status = 200, description = "One page", body = MemberPageAnswer),
        (status = 400, description = "Bad filter, count, cursor or id", body = ErrorBody),
        (status = 401, description = "Missing or wrong token", body = ErrorBody),
        (status = 403, description = "Another app's token, not the sender, or receipts disabled", body = ErrorBody),
        (status = 404, description = "No such message with receipts", body = ErrorBody),
        (status = 503, description = "Not ready", body = ErrorBody),
    ),
    security(("bearer" = []))
)]
pub async fn members(
    State(api): State<Api>,
    path: Result<Path<(String, String, String)>, PathRejection>,
    params: Result<Query<MembersParams>, QueryRejection>,
    headers: HeaderMap,
) -> Response {
    let ((app_id, group_id, msg_id), params) = match admit(&api, path, params, &headers) {
        Ok(admitted) => admitted,
        Err(r) => return r,
    };
    for (field, value) in [("group_id", &group_id), ("msg_id", &msg_id)] {
        if let Err(r) = check_id(field, value) {
            return r;
        }
    }
    let Some(requester) = params.requester.filter(|r| !r.is_empty()) else {
        return bad_request("`requester` is required");
    };
    if let Err(r) = check_id("requester", &requester) {
        return r;
    }
    let filter = match params.filter.as_deref() {
        Some("read") => MemberFilter::Read,
        Some("unread") => MemberFilter::Unread,
        Some(other) => return bad_request(format!("`filter` must be read or unread, not {other:?}")),
        None => return bad_request("`filter` is required: read or unread"),
    };
    let count = match params.count.as_deref() {
        None | Some("") => 100,
        Some(c) => match c.parse::<usize>() {
            Ok(n) if (1..=1000).contains(&n) => n,
            _ => return bad_request("`count` must be a whole number from 1 to 1000"),
        },
    };
    let after = match params.cursor.as_deref() {
        None | Some("") => None,
        Some(c) => match decode_cursor(c, &app_id, &group_id, &msg_id, filter) {
            Some(o) => Some(o),
            None => {
                return error(StatusCode::BAD_REQUEST, "invalid_cursor", "the cursor is not one this list gave out")
            }
        },
    };
    let answer = query(&api, |settings, states| {
        let state = states.iter().find(|s| s.contains_message(&app_id, &msg_id)).ok_or(QueryRefusal::NotFound)?;
        state.member_page(settings, &app_id, &group_id, &msg_id, &requester, filter, after, count)
    });
    let page = match answer {
        Ok(Ok(page)) => page,
        Ok(Err(e)) => return refusal(e),
        Err(r) => return r,
    };
    let members = page.members.into_iter().map(|(user_id, read_at)| Member { user_id, read_at }).collect();
    let next_cursor = page.next.map(|o| encode_cursor(&app_id, &group_id, &msg_id, filter, o)).unwrap_or_default();
    Json(MemberPageAnswer { members, next_cursor, is_finished: page.next.is_none() }).into_response()
}

/// Query parameters of a read mark.
#[derive(Deserialize, IntoParams)]
#[serde(deny_unknown_fields)]
#[into_params(parameter_in = Query)]
pub struct ReadMarkParams {
    /// Must be `user` (required).
    requester: Option<String>,
}

/// The peer's conversation-read mark towards `user` (0 if none is revealed).
#[utoipa::path(
    get,
    path = "/v1/apps/{app_id}/c2c/{user}/peers/{peer}/read",
    params(
        ("app_id" = String, Path, description = "The app"),
        ("user" = String, Path, description = "The user asking"),
        ("peer" = String, Path, description = "The other party"),
        ReadMarkParams,
    ),
    responses(
        (status = 200, description = "The mark", body = ReadMarkAnswer),
        (status = 400, description = "Bad request", body = ErrorBody),
        (status = 401, description = "Missing or wrong token", body = ErrorBody),
        (status = 403, description = "Another app's token, another user's mark, or receipts disabled", body = ErrorBody),
        (status = 503, description = "Not ready", body = ErrorBody),
    ),
    security(("bearer" = []))
)]
pub async fn read_mark(
    State(api): State<Api>,
    path: Result<Path<(String, String, String)>, PathRejection>,
    params: Result<Query<ReadMarkParams>, QueryRejection>,
    headers: HeaderMap,
) -> Response {
    let ((app_id, user, peer), params) = match admit(&api, path, params, &headers) {
        Ok(admitted) => admitted,
        Err(r) => return r,
    };
    for (field, value) in [("user", &user), ("peer", &peer)] {
        if let Err(r) = check_id(field, value) {
            return r;
        }
    }
    match params.requester.as_deref() {
        None | Some("") => return bad_request("`requester` is required"),
        Some(r) if r != user => return refusal(QueryRefusal::Forbidden),
        Some(_) => {}
    }
    let answer = query(&api, |settings, states| {
        if !settings.may_receive(&app_id, &user) {
            return Err(QueryRefusal::ReceiptsDisabled);
        }
        let mark = states.iter().find_map(|s| s.mark(&app_id, &peer, &user));
        // A peer whose receipts are off never reveals a read mark.
        let revealed = mark.filter(|_| settings.receipts_on(&app_id, &peer) && settings.c2c_receipts(&app_id));
        Ok(revealed.unwrap_or(0))
    });
    match answer {
        Ok(Ok(timestamp)) => Json(ReadMarkAnswer { peer, timestamp }).into_response(),
        Ok(Err(e)) => refusal(e),
        Err(r) => r,
    }
}

/// The OpenAPI document, generated from the handlers and types above.
#[derive(OpenApi)]
#[openapi(
    info(title = "receiptd query API", description = "Read receipts, member lists and read marks (CONTRACT.md §5)."),
    paths(receipts, members, read_mark),
    components(schemas(ReceiptsQuery, MessageRef, ConversationDoc, ReceiptsAnswer, MessageError, Receipt, Member, MemberPageAnswer, ReadMarkAnswer, ErrorBody, ErrorDetail)),
    modifiers(&BearerAuth)
)]
pub struct ApiDoc;

struct BearerAuth;

impl Modify for BearerAuth {
    fn modify(&self, openapi: &mut utoipa::openapi::OpenApi) {
        let components = openapi.components.get_or_insert_with(Default::default);
        components.add_security_scheme(
            "bearer",
            SecurityScheme::Http(HttpBuilder::new().scheme(HttpAuthScheme::Bearer).build()),
        );
    }
}

/// `GET /openapi.json`
pub async fn openapi() -> Response {
    Json(ApiDoc::openapi()).into_response()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_openapi_document_covers_the_contract() {
        let doc = serde_json::to_value(ApiDoc::openapi()).unwrap();
        for path in [
            "/v1/apps/{app_id}/receipts/query",
            "/v1/apps/{app_id}/groups/{group_id}/messages/{msg_id}/members",
            "/v1/apps/{app_id}/c2c/{user}/peers/{peer}/read",
        ] {
            assert!(doc["paths"][path].is_object(), "{path} missing");
        }
        let receipt = &doc["components"]["schemas"]["Receipt"]["properties"];
        for field in
            ["msg_id", "group_id", "user_id", "read_count", "unread_count", "is_peer_read", "timestamp", "version"]
        {
            assert!(receipt[field].is_object(), "Receipt.{field} missing");
        }
        assert!(doc["components"]["securitySchemes"]["bearer"].is_object());
    }

    #[test]
    fn cursors_round_trip_and_forgeries_are_refused() {
        let c = encode_cursor("a1", "g", "m", MemberFilter::Unread, 4242);
        assert_eq!(decode_cursor(&c, "a1", "g", "m", MemberFilter::Unread), Some(4242));
        assert_eq!(decode_cursor(&c, "a1", "g", "m", MemberFilter::Read), None);
        assert_eq!(decode_cursor(&c, "a1", "g", "m2", MemberFilter::Unread), None);
        let forged = format!("{:08x}{}", 4243, &c[8..]);
        assert_eq!(decode_cursor(&forged, "a1", "g", "m", MemberFilter::Unread), None);
        assert_eq!(decode_cursor("zz", "a1", "g", "m", MemberFilter::Unread), None);
    }

    #[test]
    fn secrets_compare_equal_only_when_equal() {
        assert!(same_secret(b"0123456789abcdef", b"0123456789abcdef"));
        assert!(!same_secret(b"0123456789abcdef", b"0123456789abcdeg"));
        assert!(!same_secret(b"0123456789abcdef", b"0123456789abcde"));
        assert!(!same_secret(b"", b"x"));
    }
}
