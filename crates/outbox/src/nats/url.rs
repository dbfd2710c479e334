//! The server URL of `[outbox] nats.url`: the credentials it may carry, and what of it may be
//! shown.
//!
//! A URL may carry a user and password (`nats://alice:s3cret@host:4222`) or a token
//! (`nats://s3cret@host:4222`). The NATS client takes them from its options rather than from the
//! URL, so the store takes them out of the URL and passes them there; the client, which logs the
//! servers it dials, then only ever sees the URL without them. Errors show [`redacted`] URLs.

use std::borrow::Cow;

use percent_encoding::percent_decode_str;

/// What a URL carries before the `@` of its address.
#[derive(Clone, PartialEq, Eq)]
pub(super) enum Credentials {
    /// `user:password@`.
    UserPassword(String, String),
    /// `token@`.
    Token(String),
}

/// `url` (one server's URL, or several separated by commas, as NATS takes them) without
/// credentials, and the credentials of the first server that has any: the client uses one set
/// for every server.
pub(super) fn split(url: &str) -> (String, Option<Credentials>) {
    let mut credentials = None;
    let servers = each_server(url, |userinfo| {
        if credentials.is_none() {
            credentials = Some(match userinfo.split_once(':') {
                Some((user, password)) => Credentials::UserPassword(decode(user), decode(password)),
                None => Credentials::Token(decode(userinfo)),
            });
        }
        None
    });
    (servers, credentials)
}

/// `url` with its credentials, where a server has some, replaced by `***`: what logs and error
/// messages may show of it.
pub(super) fn redacted(url: &str) -> String {
    each_server(url, |_| Some("***"))
}

/// `url` rebuilt server by server, with each server's credentials (the text before the last `@`
/// of its address) given to `userinfo`, and replaced by what it returns (`None`: removed, `@`
/// included).
fn each_server<'a>(url: &'a str, mut userinfo: impl FnMut(&'a str) -> Option<&'a str>) -> String {
    url.split(',')
        .map(|server| {
            let (scheme, rest) = match server.split_once("://") {
                Some((scheme, rest)) => (Some(scheme), rest),
                None => (None, server),
            };
            let authority_end = rest.find('/').unwrap_or(rest.len());
            // A password may hold an `@` of its own: the address follows the last one.
            let rest = match rest[..authority_end].rfind('@') {
                Some(at) => match userinfo(&rest[..at]) {
                    Some(shown) => format!("{shown}{}", &rest[at..]),
                    None => rest[at + 1..].to_owned(),
                },
                None => rest.to_owned(),
            };
            match scheme {
                Some(scheme) => format!("{scheme}://{rest}"),
                None => rest,
            }
        })
        .collect::<Vec<_>>()
        .join(",")
}

/// A URL's percent-encoded user, password or token, as the server expects it.
fn decode(text: &str) -> String {
    percent_decode_str(text)
        .decode_utf8()
        .map_or_else(|_| text.to_owned(), Cow::into_owned)
}

impl std::fmt::Debug for Credentials {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Credentials::UserPassword(..) => f.write_str("UserPassword(***)"),
            Credentials::Token(_) => f.write_str("Token(***)"),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::{Credentials, redacted, split};

    #[test]
    fn credentials_are_hidden_and_the_rest_kept() {
        let cases = [
            ("nats://127.0.0.1:4222", "nats://127.0.0.1:4222"),
            (
                "nats://alice:s3cret@nats.internal:4222",
                "nats://***@nats.internal:4222",
            ),
            (
                "tls://s3cret-token@nats.internal",
                "tls://***@nats.internal",
            ),
            ("nats://alice:p@ss@host:4222/", "nats://***@host:4222/"),
            (
                "nats://a:x@one:4222,nats://b:y@two:4222,nats://three:4222",
                "nats://***@one:4222,nats://***@two:4222,nats://three:4222",
            ),
            ("alice:s3cret@host:4222", "***@host:4222"),
        ];
        for (url, shown) in cases {
            assert_eq!(redacted(url), shown, "{url}");
        }
    }

    #[test]
    fn credentials_are_taken_out_of_the_url() {
        let user = |u: &str, p: &str| Some(Credentials::UserPassword(u.into(), p.into()));
        let cases = [
            ("nats://127.0.0.1:4222", "nats://127.0.0.1:4222", None),
            (
                "nats://alice:s3cret@host:4222",
                "nats://host:4222",
                user("alice", "s3cret"),
            ),
            (
                "tls://tok@host",
                "tls://host",
                Some(Credentials::Token("tok".into())),
            ),
            (
                "nats://alice:p@ss@host:4222",
                "nats://host:4222",
                user("alice", "p@ss"),
            ),
            (
                "nats://alice:p%40ss%3A@host",
                "nats://host",
                user("alice", "p@ss:"),
            ),
            (
                "nats://a:x@one:4222,nats://b:y@two:4222,nats://three",
                "nats://one:4222,nats://two:4222,nats://three",
                user("a", "x"),
            ),
        ];
        for (url, servers, credentials) in cases {
            assert_eq!(split(url), (servers.to_owned(), credentials), "{url}");
        }
    }
}
