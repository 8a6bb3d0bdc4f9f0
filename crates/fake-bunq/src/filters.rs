//! A user's URL notification filters (docs/bunq-api.md §8.3), what downstream sets with a
//! cached session: `POST /v1/user/{userId}/notification-filter-url` replaces all of them,
//! `GET` lists them. Categories from the Partner API, HTTPS targets, at most two targets
//! per category.

use super::errors::BunqError;
use serde::Serialize;
use serde_json::Value;

/// The Partner API's categories (its swagger enum plus those its webhook docs name).
pub const CATEGORIES: [&str; 13] = [
    "PARTNER_USER_PROVISION",
    "USER_ONBOARDING",
    "USER_INFORMATION_INQUIRY",
    "PAYMENT",
    "CARD",
    "CARD_TRANSACTION_SUCCESSFUL",
    "CARD_TRANSACTION_FAILED",
    "CARD_TRANSACTION_UPDATED",
    "CARD_TRANSACTION_REFUND",
    "CARD_TOKENIZATION",
    "MUTATION",
    "SUPPORT",
    "REQUEST",
];

/// bunq allows two callback URLs per category.
pub const MAX_PER_CATEGORY: usize = 2;

/// One filter as bunq lists it (`NotificationFilterUrl`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Filter {
    pub id: u64,
    pub created: String,
    pub updated: String,
    pub category: String,
    /// Always empty here: the filter is the user's own, for all of their accounts.
    pub all_user_id: Vec<String>,
    pub all_monetary_account_id: Vec<String>,
    pub all_verification_type: Vec<String>,
    pub notification_target: String,
}

/// A requested filter before it gets an id.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Requested {
    pub category: String,
    pub notification_target: String,
    pub all_verification_type: Vec<String>,
}

fn invalid(message: impl Into<String>) -> BunqError {
    BunqError::InvalidBody(message.into())
}

/// Validates a POST body: `{"notification_filters": [{"category", "notification_target",
/// "all_verification_type"?}]}`; an empty list clears every filter.
pub fn parse(body: &serde_json::Map<String, Value>) -> Result<Vec<Requested>, BunqError> {
    let Some(Value::Array(filters)) = body.get("notification_filters") else {
        return Err(invalid("The field \"notification_filters\" is required and must be an array."));
    };
    let mut requested = Vec::with_capacity(filters.len());
    for filter in filters {
        let Value::Object(filter) = filter else {
            return Err(invalid("Each notification filter must be an object."));
        };
        let category = filter.get("category").and_then(Value::as_str).unwrap_or_default();
        if !CATEGORIES.contains(&category) {
            return Err(invalid("The field \"category\" must be a known notification category."));
        }
        let target = filter.get("notification_target").and_then(Value::as_str).unwrap_or_default();
        let https = url::Url::parse(target).is_ok_and(|url| url.scheme() == "https" && url.host_str().is_some());
        if !https {
            return Err(invalid("The field \"notification_target\" must be an https URL."));
        }
        let verification = match filter.get("all_verification_type") {
            None | Some(Value::Null) => Vec::new(),
            Some(Value::Array(types)) if types.iter().all(Value::is_string) => {
                types.iter().filter_map(Value::as_str).map(str::to_owned).collect()
            }
            Some(_) => return Err(invalid("The field \"all_verification_type\" must be an array of strings.")),
        };
        if requested.iter().filter(|r: &&Requested| r.category == category).count() >= MAX_PER_CATEGORY {
            return Err(invalid(format!("At most {MAX_PER_CATEGORY} notification filters per category are allowed.")));
        }
        requested.push(Requested {
            category: category.to_owned(),
            notification_target: target.to_owned(),
            all_verification_type: verification,
        });
    }
    Ok(requested)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn body(json: &str) -> serde_json::Map<String, Value> {
        serde_json::from_str(json).unwrap()
    }

    #[test]
    fn accepts_https_targets_of_known_categories_and_an_empty_list() {
        let filters = parse(&body(
            r#"{"notification_filters":[{"category":"USER_ONBOARDING","notification_target":"https://p.example/hook","all_verification_type":["BUNQ_CERTIFICATE"]}]}"#,
        ))
        .unwrap();
        assert_eq!(filters[0].all_verification_type, ["BUNQ_CERTIFICATE"]);
        assert_eq!(parse(&body(r#"{"notification_filters":[]}"#)).unwrap(), Vec::new());
    }

    #[test]
    fn refuses_plain_http_unknown_categories_and_a_third_target_per_category() {
        let hook =
            |category: &str, target: &str| format!(r#"{{"category":"{category}","notification_target":"{target}"}}"#);
        for filters in [
            vec![hook("USER_ONBOARDING", "http://p.example/hook")],
            vec![hook("TELEPATHY", "https://p.example/hook")],
            vec![
                hook("PAYMENT", "https://a.example"),
                hook("PAYMENT", "https://b.example"),
                hook("PAYMENT", "https://c.example"),
            ],
        ] {
            let json = format!(r#"{{"notification_filters":[{}]}}"#, filters.join(","));
            assert!(matches!(parse(&body(&json)), Err(BunqError::InvalidBody(_))), "{json}");
        }
        assert!(parse(&body("{}")).is_err());
    }
}
