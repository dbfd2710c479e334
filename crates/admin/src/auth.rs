//! The bearer token that mutating calls must carry.
//!
//! The token is read once, at start, from the environment variable `admin.token_env` names.
//! Without one, every mutating call is refused (403): a loopback port is not a permission. The
//! comparison takes the same time whatever the bytes, so the answer's timing tells nothing about
//! how much of a guess was right (only its length, which a token of fixed size gives away
//! anyway).

use http::HeaderMap;
use http::header::AUTHORIZATION;

/// Who may call the mutating endpoints.
#[derive(Clone)]
pub(crate) enum Token {
    /// `admin.token_env` is unset, or names a variable that is unset or empty: nobody.
    Missing {
        /// The variable to set, when `token_env` names one.
        variable: Option<String>,
    },
    /// Whoever sends `Authorization: Bearer <this>`.
    Bearer(Vec<u8>),
}

/// Why a mutating call is refused.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Refusal {
    /// No token is configured (403).
    NotConfigured(String),
    /// The call's token is missing or wrong (401).
    Unauthorized,
}

impl Token {
    /// The token of the variable `token_env` names, read now.
    pub(crate) fn from_env(token_env: Option<&str>) -> Token {
        let token = token_env.and_then(|name| std::env::var(name).ok());
        Token::new(token_env, token)
    }

    /// `token`, said to come from the variable `token_env`; an empty one is none.
    pub(crate) fn new(token_env: Option<&str>, token: Option<String>) -> Token {
        match token.filter(|value| !value.is_empty()) {
            Some(token) => Token::Bearer(token.into_bytes()),
            None => Token::Missing {
                variable: token_env.map(str::to_owned),
            },
        }
    }

    /// Whether `headers` carry the token.
    pub(crate) fn check(&self, headers: &HeaderMap) -> Result<(), Refusal> {
        let expected = match self {
            Token::Bearer(token) => token,
            Token::Missing { variable } => {
                let message = match variable {
                    Some(name) => format!(
                        "mutating calls are disabled: set the environment variable {name} to a \
                         token and restart rampart"
                    ),
                    None => "mutating calls are disabled: set [admin] token_env to the name of \
                             an environment variable holding a token, and restart rampart"
                        .to_owned(),
                };
                return Err(Refusal::NotConfigured(message));
            }
        };
        // One field (RFC 9110 §11.6.2): of two, which was meant cannot be told, and an
        // intermediary may read the other.
        let mut fields = headers.get_all(AUTHORIZATION).iter();
        let (Some(field), None) = (fields.next(), fields.next()) else {
            return Err(Refusal::Unauthorized);
        };
        let given = bearer(field.as_bytes()).ok_or(Refusal::Unauthorized)?;
        if constant_time_eq(given, expected) {
            Ok(())
        } else {
            Err(Refusal::Unauthorized)
        }
    }
}

/// The token of an `Authorization` value of the Bearer scheme: the scheme's name in any case
/// (RFC 9110, 11.1: schemes are case-insensitive), one or more spaces, then the token.
fn bearer(value: &[u8]) -> Option<&[u8]> {
    let (scheme, rest) = value.split_at_checked(b"Bearer".len())?;
    if !scheme.eq_ignore_ascii_case(b"Bearer") {
        return None;
    }
    let spaces = rest.iter().take_while(|&&b| b == b' ').count();
    let token = &rest[spaces..];
    (spaces > 0 && !token.is_empty()).then_some(token)
}

// Never printed: a token in a debug log is a token leaked.
impl std::fmt::Debug for Token {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Token::Missing { variable } => f
                .debug_struct("Missing")
                .field("variable", variable)
                .finish(),
            Token::Bearer(_) => f.write_str("Bearer(..)"),
        }
    }
}

/// Whether `a` and `b` are equal, in a time that depends on their lengths only: every byte is
/// compared, and the differences are folded with `|` instead of returning at the first.
pub(crate) fn constant_time_eq(a: &[u8], b: &[u8]) -> bool {
    if a.len() != b.len() {
        return false;
    }
    let difference = a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y));
    // `black_box` keeps the optimiser from turning the fold back into an early exit.
    std::hint::black_box(difference) == 0
}

#[cfg(test)]
mod tests {
    use http::HeaderValue;

    use super::*;

    #[test]
    fn equal_only_when_every_byte_is() {
        assert!(constant_time_eq(b"", b""));
        assert!(constant_time_eq(b"s3cret", b"s3cret"));
        assert!(!constant_time_eq(b"s3cret", b"s3creT"));
        assert!(!constant_time_eq(b"s3cret", b"S3cret"));
        assert!(!constant_time_eq(b"s3cret", b"s3cre"));
        assert!(!constant_time_eq(b"s3cret", b"s3cret!"));
    }

    fn headers(authorization: &str) -> HeaderMap {
        let mut headers = HeaderMap::new();
        headers.insert(AUTHORIZATION, HeaderValue::from_str(authorization).unwrap());
        headers
    }

    #[test]
    fn a_bearer_token_must_match() {
        let token = Token::Bearer(b"s3cret".to_vec());
        assert_eq!(token.check(&headers("Bearer s3cret")), Ok(()));
        assert_eq!(
            token.check(&headers("Bearer nope")),
            Err(Refusal::Unauthorized)
        );
        assert_eq!(
            token.check(&headers("Basic s3cret")),
            Err(Refusal::Unauthorized)
        );
        assert_eq!(token.check(&HeaderMap::new()), Err(Refusal::Unauthorized));
    }

    #[test]
    fn two_authorization_fields_are_refused_whatever_they_hold() {
        let token = Token::Bearer(b"s3cret".to_vec());
        for second in ["Bearer s3cret", "Bearer nope"] {
            let mut both = headers("Bearer s3cret");
            both.append(AUTHORIZATION, HeaderValue::from_str(second).unwrap());
            assert_eq!(token.check(&both), Err(Refusal::Unauthorized), "{second}");
        }
    }

    #[test]
    fn the_scheme_is_any_case_and_the_token_exact() {
        let token = Token::Bearer(b"s3cret".to_vec());
        for good in ["bearer s3cret", "BEARER s3cret", "Bearer   s3cret"] {
            assert_eq!(token.check(&headers(good)), Ok(()), "{good}");
        }
        for bad in [
            "Bearer S3cret",
            "Bearer s3cret ",
            "Bearers3cret",
            "Bearer",
            "Bearer ",
            "Bear s3cret",
            "Beare s3cret",
            " Bearer s3cret",
        ] {
            assert_eq!(
                token.check(&headers(bad)),
                Err(Refusal::Unauthorized),
                "{bad}"
            );
        }
    }

    #[test]
    fn without_a_token_the_refusal_names_the_variable() {
        let token = Token::Missing {
            variable: Some("RAMPART_ADMIN_TOKEN".into()),
        };
        match token.check(&headers("Bearer anything")) {
            Err(Refusal::NotConfigured(message)) => {
                assert!(message.contains("RAMPART_ADMIN_TOKEN"), "{message}")
            }
            other => panic!("{other:?}"),
        }
    }
}
