//! Kubernetes name rules and the glob patterns Replika accepts for namespaces
//! and for the data keys of Secrets and ConfigMaps.

/// Why a namespace name or pattern is malformed; `None` when it is fine.
/// A pattern may use `*` (any run of characters) and `?` (one character).
pub fn namespace_pattern_problem(pattern: &str) -> Option<String> {
    if pattern.is_empty() {
        return Some("must not be empty".into());
    }
    if pattern.len() > 63 {
        return Some("must be at most 63 characters".into());
    }
    if let Some(bad) = pattern
        .chars()
        .find(|c| !(c.is_ascii_lowercase() || c.is_ascii_digit() || matches!(c, '-' | '*' | '?')))
    {
        return Some(format!(
            "contains {bad:?}: use lowercase letters, digits, '-', and the globs '*' and '?'"
        ));
    }
    if !is_glob(pattern) {
        return dns_label_problem(pattern);
    }
    None
}

/// Why `name` is not a DNS-1123 label (namespace names); `None` when it is one.
pub fn dns_label_problem(name: &str) -> Option<String> {
    if name.is_empty() || name.len() > 63 {
        return Some("must be 1 to 63 characters".into());
    }
    label_characters_problem(name)
}

/// Why `part` does not have the characters of a DNS-1123 label, whatever its length.
fn label_characters_problem(part: &str) -> Option<String> {
    if !part
        .chars()
        .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '-')
    {
        return Some("must consist of lowercase letters, digits and '-'".into());
    }
    if part.is_empty() || part.starts_with('-') || part.ends_with('-') {
        return Some("must start and end with a letter or digit".into());
    }
    None
}

/// Why `name` is not a DNS-1123 subdomain (most object names); `None` when it is one.
pub fn dns_subdomain_problem(name: &str) -> Option<String> {
    if name.is_empty() || name.len() > 253 {
        return Some("must be 1 to 253 characters".into());
    }
    // Like Kubernetes, only the whole name is limited (253), not each part.
    name.split('.')
        .find_map(label_characters_problem)
        .map(|_| "must be lowercase letters, digits, '-' and '.', each part starting and ending with a letter or digit".into())
}

/// Why a data key or key pattern (`spec.target.data`) is malformed; `None`
/// when it is fine. Keys are what Secrets and ConfigMaps accept: letters,
/// digits, '-', '_' and '.', at most 253 characters; a pattern may add `*` and `?`.
pub fn data_key_pattern_problem(pattern: &str) -> Option<String> {
    if pattern.is_empty() || pattern.len() > 253 {
        return Some("must be 1 to 253 characters".into());
    }
    pattern
        .chars()
        .find(|c| !(c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.' | '*' | '?')))
        .map(|bad| {
            format!(
                "contains {bad:?}: a key has letters, digits, '-', '_' and '.', and a pattern the globs '*' and '?'"
            )
        })
}

/// Whether `pattern` uses glob characters.
pub fn is_glob(pattern: &str) -> bool {
    pattern.contains(['*', '?'])
}

/// Whether `name` matches the glob `pattern` (`*` any run, `?` one character, else literal).
pub fn glob_matches(pattern: &str, name: &str) -> bool {
    let (pattern, name) = (pattern.as_bytes(), name.as_bytes());
    let (mut p, mut n) = (0, 0);
    // Position of the last `*` seen and of the name when it was seen, for backtracking.
    let mut star: Option<(usize, usize)> = None;
    while n < name.len() {
        match pattern.get(p) {
            Some(b'*') => {
                star = Some((p, n));
                p += 1;
            }
            Some(&c) if c == b'?' || c == name[n] => {
                p += 1;
                n += 1;
            }
            _ => match star {
                Some((star_p, star_n)) => {
                    p = star_p + 1;
                    n = star_n + 1;
                    star = Some((star_p, star_n + 1));
                }
                None => return false,
            },
        }
    }
    pattern[p..].iter().all(|&c| c == b'*')
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn globs_match_like_shell_patterns() {
        assert!(glob_matches("team-*", "team-a"));
        assert!(glob_matches("team-*", "team-"));
        assert!(!glob_matches("team-*", "teams"));
        assert!(glob_matches("*-prod", "shop-prod"));
        assert!(glob_matches("a*b*c", "axxbyyc"));
        assert!(!glob_matches("a*b*c", "axxbyy"));
        assert!(glob_matches("ns-?", "ns-1"));
        assert!(!glob_matches("ns-?", "ns-10"));
        assert!(glob_matches("*", "anything"));
        assert!(glob_matches("exact", "exact"));
        assert!(!glob_matches("exact", "exact2"));
    }

    #[test]
    fn patterns_are_checked_against_namespace_rules() {
        assert_eq!(namespace_pattern_problem("team-*"), None);
        assert_eq!(namespace_pattern_problem("kube-system"), None);
        assert!(namespace_pattern_problem("Team").is_some());
        assert!(namespace_pattern_problem("a/b").is_some());
        assert!(namespace_pattern_problem("-x").is_some());
        assert!(namespace_pattern_problem("").is_some());
        assert!(namespace_pattern_problem(&"a".repeat(64)).is_some());
    }

    #[test]
    fn data_key_patterns_follow_the_key_rules() {
        assert_eq!(data_key_pattern_problem("tls.crt"), None);
        assert_eq!(data_key_pattern_problem(".dockerconfigjson"), None);
        assert_eq!(data_key_pattern_problem("DB_*"), None);
        assert!(data_key_pattern_problem("").is_some());
        assert!(data_key_pattern_problem("a/b").is_some());
        assert!(data_key_pattern_problem("a b").is_some());
    }

    #[test]
    fn subdomains_allow_dots() {
        assert_eq!(dns_subdomain_problem("registry.creds-1"), None);
        assert!(dns_subdomain_problem("Registry").is_some());
        assert!(dns_subdomain_problem("a..b").is_some());
    }
}
