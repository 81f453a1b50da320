//! The YAML parser's messages in the words of the config file: what is wrong and on which line,
//! instead of the parser's jargon ("invalid value: map, expected map with a single key").

/// `message` (serde_yaml's, with its line if it had one) rewritten where a better one is known.
pub(super) fn explain(message: &str, line: Option<usize>, text: &str) -> (String, Option<usize>) {
    if let Some(field) = message
        .strip_prefix("duplicate field `")
        .and_then(|rest| rest.split('`').next())
    {
        let second = key_lines(text, field).nth(1);
        return (format!("`{field}` is set twice; keep one"), second.or(line));
    }
    if let Some(address) = message
        .split("repeats the address ")
        .nth(1)
        .and_then(|rest| rest.split_whitespace().next())
    {
        // The parser's position is past the list by now: point at the repeat itself.
        let repeat = text
            .lines()
            .enumerate()
            .filter(|(_, l)| l.split('#').next().unwrap_or("").contains(address))
            .nth(1)
            .map(|(i, _)| i + 1);
        let message = match message.rsplit_once(" at line ") {
            Some((message, _)) => message,
            None => message,
        };
        return (message.to_owned(), repeat.or(line));
    }
    if message.contains("expected map with a single key") && message.starts_with("discovery") {
        return (
            "discovery: name exactly one source, `static` or `kubernetes`".to_owned(),
            line,
        );
    }
    for (opened, what) in [
        ("while parsing a flow sequence at ", "a `[`"),
        ("while parsing a flow mapping at ", "a `{`"),
        ("while scanning a quoted scalar at ", "a quote"),
    ] {
        if let Some(at) = message.split(opened).nth(1) {
            let where_opened = at.trim_end_matches('.');
            return (
                format!(
                    "YAML syntax: {what} opened at {where_opened} is never closed (check for a \
                     missing `,` or closing bracket before the line named)"
                ),
                opened_line(where_opened).or(line),
            );
        }
    }
    let syntax = [
        "did not find expected",
        "mapping values are not allowed",
        "found character that cannot start any token",
        "found unexpected end of stream",
        "could not find expected ':'",
        "found a tab character",
    ];
    if syntax.iter().any(|s| message.contains(s)) {
        return (format!("YAML syntax: {message}"), line);
    }
    (message.to_owned(), line)
}

/// 1-based lines where `key:` is written, block (`key:`) or flow (`{ key: … }`) style.
fn key_lines<'a>(text: &'a str, key: &'a str) -> impl Iterator<Item = usize> + 'a {
    text.lines().enumerate().filter_map(move |(i, line)| {
        let code = line.split('#').next().unwrap_or("");
        let written = code.split(['{', ',', '-']).any(|part| {
            part.trim_start()
                .strip_prefix(key)
                .is_some_and(|rest| rest.trim_start().starts_with(':'))
        });
        written.then_some(i + 1)
    })
}

/// The line of `line L column C`.
fn opened_line(at: &str) -> Option<usize> {
    at.strip_prefix("line ")?
        .split_whitespace()
        .next()?
        .parse()
        .ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_duplicate_key_names_the_line_of_its_second_use() {
        let text = "listen: 127.0.0.1:1\n# listen: no\nlisten: 127.0.0.1:2\n";
        let (message, line) = explain("duplicate field `listen`", None, text);
        assert_eq!(message, "`listen` is set twice; keep one");
        assert_eq!(line, Some(3));
    }

    #[test]
    fn an_unclosed_bracket_names_where_it_opened() {
        let (message, line) = explain(
            "did not find expected ',' or ']' at line 2 column 1, while parsing a flow sequence at line 1 column 35",
            Some(2),
            "",
        );
        assert!(
            message.starts_with("YAML syntax: a `[` opened at line 1 column 35 is never closed"),
            "{message}"
        );
        assert_eq!(line, Some(1));
    }
}
