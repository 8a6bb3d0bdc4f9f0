//! `POST /v1/session-server`: opens a session for a registered secret and answers the
//! session token with the `UserApiKey` (partner company and granting person), or, for the
//! partner's own API key, with its `UserCompany`.

use super::reply::Reply;
use crate::errors::BunqError;
use crate::responses::{self as wire, AnchoredUser, Item, UserObject};
use crate::secret::SecretDigest;
use crate::state::NewSession;
use crate::{lock, App};
use uuid::Uuid;

pub(super) fn session_server_effect(app: &App, token: &str, secret: SecretDigest) -> Result<Reply, BunqError> {
    let session = lock(&app.state).open_session(token, secret, app.config.allow_credential_reuse)?;
    Ok(Reply::ok(session_body(app, &session)))
}

fn session_body(app: &App, session: &NewSession) -> Vec<u8> {
    let config = &app.config;
    let created = wire::bunq_timestamp(session.created);
    let users_created = wire::bunq_timestamp(session.users.created);
    let token = Item::Token(wire::TokenObject {
        id: session.id,
        created: created.clone(),
        updated: created,
        token: session.token.clone(),
    });
    let partner = UserObject {
        id: config.partner_company_id,
        created: users_created.clone(),
        updated: users_created.clone(),
        public_uuid: Uuid::new_v5(&Uuid::NAMESPACE_OID, config.partner_display_name.as_bytes()).to_string(),
        display_name: config.partner_display_name.clone(),
        public_nick_name: config.partner_display_name.clone(),
        session_timeout: config.session_timeout_secs,
    };
    if session.partner {
        // bunq's order (docs/bunq-api.md §5): Id, Token, then the user.
        return wire::envelope_body(vec![
            Item::Id(wire::IdObject { id: session.id }),
            token,
            Item::UserCompany(partner),
        ]);
    }
    let name = format!("Fake User {}", session.users.user_person_id);
    let person = UserObject {
        id: session.users.user_person_id,
        created: users_created.clone(),
        updated: users_created.clone(),
        public_uuid: session.users.user_person_uuid.to_string(),
        display_name: name.clone(),
        public_nick_name: name,
        session_timeout: config.session_timeout_secs,
    };
    wire::envelope_body(vec![
        Item::Id(wire::IdObject { id: session.id }),
        token,
        Item::UserApiKey(Box::new(wire::UserApiKeyObject {
            id: session.users.user_api_key_id,
            created: users_created.clone(),
            updated: users_created,
            requested_by_user: AnchoredUser::UserCompany(partner),
            granted_by_user: AnchoredUser::UserPerson(person),
        })),
    ])
}
