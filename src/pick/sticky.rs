//! Sticky sessions: the version a client's cookie names, read without allocating.

use http::header::{HeaderMap, COOKIE};

use crate::snapshot::STICKY_COOKIE;

/// The value of the sticky cookie in `headers`, if the client sent one.
#[inline]
pub fn pinned_version(headers: &HeaderMap) -> Option<&str> {
    headers
        .get_all(COOKIE)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(';'))
        .find_map(|pair| {
            let (name, value) = pair.trim().split_once('=')?;
            (name == STICKY_COOKIE).then_some(value.trim())
        })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_cookie_is_found_among_others() {
        let mut h = HeaderMap::new();
        assert_eq!(pinned_version(&h), None);
        h.append(
            COOKIE,
            "session=abc; tidegate-version=v2; theme=dark"
                .parse()
                .unwrap(),
        );
        assert_eq!(pinned_version(&h), Some("v2"));
        let mut h = HeaderMap::new();
        h.append(COOKIE, "a=1".parse().unwrap());
        h.append(COOKIE, "tidegate-version=5d8f7c9b6".parse().unwrap());
        assert_eq!(
            pinned_version(&h),
            Some("5d8f7c9b6"),
            "cookies may span headers"
        );
        let mut h = HeaderMap::new();
        h.append(COOKIE, "xtidegate-version=v9".parse().unwrap());
        assert_eq!(pinned_version(&h), None, "names match exactly");
    }
}
