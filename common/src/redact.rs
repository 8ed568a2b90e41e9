//! Keeping secrets out of logs, errors and status output.
//!
//! A URL's credentials are everything between `://` and the **last** `@`. A password may hold
//! any character, `/ ? # @ :` and `%` included, so the first `/` or `@` says nothing about
//! where it ends; only the last `@` is certain to come after it. If a path or query also holds
//! an `@`, a little more is hidden than needed, never less.

/// What replaces a secret.
pub const MASK: &str = "****";

/// The pieces of `scheme://userinfo@rest`, or `None` when `url` carries no credentials.
fn split_credentials(url: &str) -> Option<(&str, &str, &str)> {
    let (scheme, rest) = url.split_once("://")?;
    let (credentials, host_and_path) = rest.rsplit_once('@')?;
    Some((scheme, credentials, host_and_path))
}

/// `url` with any password replaced by `****` (`redis://:secret@host` → `redis://:****@host`).
/// A lone userinfo part (`redis://token@host`) may be a token and is hidden too. Text that is
/// not a URL with credentials comes back unchanged.
pub fn redact_url(url: &str) -> String {
    let Some((scheme, credentials, host_and_path)) = split_credentials(url) else {
        return url.to_string();
    };
    match credentials.split_once(':') {
        Some((user, _)) => format!("{scheme}://{user}:{MASK}@{host_and_path}"),
        None => format!("{scheme}://{MASK}@{host_and_path}"),
    }
}

/// The secret parts of `url` (its password, or a lone userinfo token), as written and
/// percent-decoded, for scrubbing messages that may quote them (a parser's error, say).
pub fn secrets_of(url: &str) -> Vec<String> {
    let Some((_, credentials, _)) = split_credentials(url) else {
        return Vec::new();
    };
    let secret = credentials
        .split_once(':')
        .map_or(credentials, |(_, password)| password);
    let mut secrets = vec![secret.to_string()];
    let decoded = percent_decode(secret);
    if decoded != secret {
        secrets.push(decoded);
    }
    secrets.retain(|s| !s.is_empty());
    secrets
}

/// `text` with every occurrence of `secret` replaced (for messages that may quote a URL).
pub fn scrub(text: &str, secret: &str) -> String {
    if secret.is_empty() {
        text.to_string()
    } else {
        text.replace(secret, MASK)
    }
}

/// `message`, which may quote `url` or parts of it, with `url`'s credentials hidden: the URL
/// itself is redacted, then any remaining copy of the secret (raw or decoded) is scrubbed.
pub fn scrub_url_from(message: &str, url: &str) -> String {
    let mut text = message.replace(url, &redact_url(url));
    for secret in secrets_of(url) {
        text = scrub(&text, &secret);
    }
    text
}

/// `%XX` sequences decoded (lossily for invalid UTF-8); anything else is kept as it is.
fn percent_decode(text: &str) -> String {
    let bytes = text.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        let hex = |b: u8| (b as char).to_digit(16);
        if bytes[i] == b'%'
            && i + 2 < bytes.len()
            && let (Some(high), Some(low)) = (hex(bytes[i + 1]), hex(bytes[i + 2]))
        {
            out.push((high * 16 + low) as u8);
            i += 3;
            continue;
        }
        out.push(bytes[i]);
        i += 1;
    }
    String::from_utf8_lossy(&out).into_owned()
}

#[cfg(test)]
mod tests {
    use proptest::prelude::*;

    use super::*;

    #[test]
    fn passwords_are_hidden_and_the_rest_kept() {
        assert_eq!(
            redact_url("redis://:s3cret@redis:6379/"),
            "redis://:****@redis:6379/"
        );
        assert_eq!(
            redact_url("redis://user:s3cret@redis:6379/0"),
            "redis://user:****@redis:6379/0"
        );
        assert_eq!(redact_url("redis://token@redis"), "redis://****@redis");
        assert_eq!(redact_url("redis://redis:6379/"), "redis://redis:6379/");
        assert_eq!(redact_url("not a url"), "not a url");
        assert_eq!(scrub("bad redis://:pw@h", "pw"), "bad redis://:****@h");
    }

    #[test]
    fn a_password_with_url_delimiters_is_hidden_whole() {
        assert_eq!(
            redact_url("redis://era5:a/b?c#d@e:f%2F@redis:6379/0"),
            "redis://era5:****@redis:6379/0"
        );
        assert_eq!(
            secrets_of("redis://era5:p%2Fw@h/"),
            vec!["p%2Fw".to_string(), "p/w".to_string()]
        );
        assert_eq!(
            scrub_url_from(
                "cannot parse redis://:p/w@h:x/ (password p/w)",
                "redis://:p/w@h:x/"
            ),
            "cannot parse redis://:****@h:x/ (password ****)"
        );
    }

    /// Passwords made of the characters that break naive URL splitting, and unicode.
    fn password() -> impl Strategy<Value = String> {
        proptest::collection::vec(
            prop_oneof![
                Just('/'),
                Just('?'),
                Just('#'),
                Just('@'),
                Just(':'),
                Just('%'),
                Just('é'),
                Just('密'),
                Just('🔑'),
                proptest::char::range('a', 'z'),
                proptest::char::range('0', '9'),
            ],
            1..24,
        )
        .prop_map(|chars| chars.into_iter().collect())
    }

    proptest! {
        #[test]
        fn no_password_survives_redaction(
            password in password(),
            user in "[a-z]{0,6}",
            scheme in prop_oneof![Just("redis"), Just("rediss"), Just("https"), Just("http")],
            tail in prop_oneof![Just(""), Just("/"), Just("/0"), Just(":6379/0?protocol=resp3")],
        ) {
            let url = format!("{scheme}://{user}:{password}@redis.example{tail}");
            let redacted = redact_url(&url);
            prop_assert_eq!(&redacted, &format!("{scheme}://{user}:****@redis.example{tail}"));
            // A message quoting the URL, or the password alone, keeps neither.
            let message = format!("invalid --redis `{url}`: password `{password}` rejected");
            let scrubbed = scrub_url_from(&message, &url);
            prop_assert!(!scrubbed.contains(&password), "{}", scrubbed);
            // Decoded, `%2a` is a `*`, which the mask itself is made of.
            let decoded = percent_decode(&password);
            if !decoded.contains('*') {
                prop_assert!(!scrubbed.contains(&decoded), "{}", scrubbed);
            }
        }
    }
}
