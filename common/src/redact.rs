//! Keeping secrets out of logs, errors and status output.

/// `url` with any password replaced by `****` (`redis://:secret@host` → `redis://:****@host`).
/// Text that is not a URL with credentials comes back unchanged.
pub fn redact_url(url: &str) -> String {
    let Some((scheme, rest)) = url.split_once("://") else {
        return url.to_string();
    };
    let (authority, path) = match rest.find('/') {
        Some(slash) => rest.split_at(slash),
        None => (rest, ""),
    };
    let Some((credentials, host)) = authority.rsplit_once('@') else {
        return url.to_string();
    };
    let user = credentials
        .split_once(':')
        .map_or(credentials, |(user, _)| user);
    if credentials.contains(':') {
        format!("{scheme}://{user}:****@{host}{path}")
    } else {
        // A lone userinfo part may be a token (redis://token@host): hide it too.
        format!("{scheme}://****@{host}{path}")
    }
}

/// `text` with every occurrence of `secret` replaced (for messages that may quote a URL).
pub fn scrub(text: &str, secret: &str) -> String {
    if secret.is_empty() {
        text.to_string()
    } else {
        text.replace(secret, "****")
    }
}

#[cfg(test)]
mod tests {
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
}
