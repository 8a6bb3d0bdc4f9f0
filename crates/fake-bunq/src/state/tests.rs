use super::*;
use bunq_protocol::signing::ClientKey;

fn installed(state: &mut BunqState) -> String {
    let key = ClientKey::generate().unwrap();
    state.install(PublicKey::from_pem(key.public_key_pem()).unwrap()).token
}

#[test]
fn token_is_64_lowercase_hex() {
    let t = new_token();
    assert_eq!(t.len(), 64);
    assert!(t.chars().all(|c| c.is_ascii_hexdigit() && !c.is_ascii_uppercase()));
}

#[test]
fn same_secret_keeps_user_ids_across_installations() {
    let mut state = BunqState::default();
    let secret = SecretDigest::of("s");
    let mut users = Vec::new();
    for _ in 0..2 {
        let token = installed(&mut state);
        state.register_device(&token, secret).unwrap();
        users.push(state.open_session(&token, secret, true).unwrap().users);
    }
    assert_eq!(users[0], users[1]);
    assert_eq!(state.sessions_created_for(secret), 2);
    assert_eq!(state.credential_state(secret), Some(CredentialState::Active));
}

#[test]
fn session_needs_device_on_the_same_installation() {
    let mut state = BunqState::default();
    let secret = SecretDigest::of("s");
    let a = installed(&mut state);
    let b = installed(&mut state);
    state.register_device(&a, secret).unwrap();
    assert_eq!(state.open_session(&b, secret, true).unwrap_err(), BunqError::CredentialsIncorrect);
}

#[test]
fn expired_and_rejected_credentials_fail_and_single_use_is_enforceable() {
    let mut state = BunqState::default();
    let token = installed(&mut state);
    let rejected = SecretDigest::of("r");
    state.register_credential(rejected, CredentialState::Rejected);
    assert_eq!(state.register_device(&token, rejected).unwrap_err(), BunqError::CredentialsIncorrect);

    let once = SecretDigest::of("once");
    state.register_device(&token, once).unwrap();
    state.open_session(&token, once, false).unwrap();
    assert_eq!(state.open_session(&token, once, false).unwrap_err(), BunqError::CredentialsIncorrect);

    let expiring = SecretDigest::of("e");
    state.register_device(&token, expiring).unwrap();
    state.register_credential(expiring, CredentialState::Expired);
    assert_eq!(state.open_session(&token, expiring, true).unwrap_err(), BunqError::CredentialsIncorrect);
}

#[test]
fn pending_credential_expires_after_ttl_but_active_one_does_not() {
    let mut state = BunqState::new(Some(Duration::ZERO), Duration::from_secs(60));
    let token = installed(&mut state);
    let secret = SecretDigest::of("slow");
    assert_eq!(state.register_device(&token, secret).unwrap_err(), BunqError::CredentialsIncorrect);
    assert_eq!(state.credential_state(secret), Some(CredentialState::Expired));

    let used = SecretDigest::of("used");
    state.register_credential(used, CredentialState::Active);
    state.register_device(&token, used).unwrap();
    state.open_session(&token, used, true).unwrap();
}

#[test]
fn a_session_authenticates_until_its_timeout_or_until_it_is_ended() {
    let secret = SecretDigest::of("s");
    let mut short = BunqState::new(None, Duration::ZERO);
    let token = installed(&mut short);
    short.register_device(&token, secret).unwrap();
    let expired = short.open_session(&token, secret, true).unwrap();
    assert_eq!(short.authenticate_session(Some(&expired.token)).unwrap_err(), BunqError::InsufficientAuthentication);

    let mut state = BunqState::default();
    let token = installed(&mut state);
    state.register_device(&token, secret).unwrap();
    let session = state.open_session(&token, secret, true).unwrap();
    let auth = state.authenticate_session(Some(&session.token)).unwrap();
    assert_eq!((auth.session_id, auth.installation_token.as_str()), (session.id, token.as_str()));
    assert_eq!(auth.user_id, session.users.user_api_key_id);
    // The installation token is no session token, and another session's id is not ours.
    assert!(state.authenticate_session(Some(&token)).is_err());
    assert_eq!(state.end_session(&session.token, session.id + 1000).unwrap_err(), BunqError::NotFound);
    assert_eq!(state.end_session(&session.token, 0), Ok(session.id));
    assert_eq!(state.ended_sessions(), &[session.id]);
    assert_eq!(state.end_session(&session.token, 0).unwrap_err(), BunqError::InsufficientAuthentication);
}

#[test]
fn request_ids_are_unique_per_installation() {
    let mut state = BunqState::default();
    let a = installed(&mut state);
    let b = installed(&mut state);
    state.claim_request_id(&a, "r1").unwrap();
    assert!(matches!(state.claim_request_id(&a, "r1"), Err(BunqError::RequestIdReused(_))));
    state.claim_request_id(&b, "r1").unwrap();
}

#[test]
fn credential_state_json_accepts_bunq_and_lowercase_names() {
    let a: CredentialState = serde_json::from_str("\"EXPIRED\"").unwrap();
    let b: CredentialState = serde_json::from_str("\"expired\"").unwrap();
    assert_eq!(a, b);
}
