//! Go's formatting of strings and error lists, for error texts that must match
//! Kubernetes' byte for byte.

use std::fmt::Write as _;

/// Go's `%q` of a string (`strconv.Quote`): `"` and `\` escaped, `\a \b \f \n \r \t
/// \v`, other ASCII controls as `\xhh`, other non-printable characters as `\uhhhh` or
/// `\Uhhhhhhhh`.
pub fn go_quote(s: &str) -> String {
    let mut out = String::with_capacity(s.len() + 2);
    out.push('"');
    for c in s.chars() {
        match c {
            '"' => out.push_str("\\\""),
            '\\' => out.push_str("\\\\"),
            '\u{7}' => out.push_str("\\a"),
            '\u{8}' => out.push_str("\\b"),
            '\u{c}' => out.push_str("\\f"),
            '\n' => out.push_str("\\n"),
            '\r' => out.push_str("\\r"),
            '\t' => out.push_str("\\t"),
            '\u{b}' => out.push_str("\\v"),
            c if go_is_print(c) => out.push(c),
            c if (c as u32) < 0x80 => {
                let _ = write!(out, "\\x{:02x}", c as u32);
            }
            c if (c as u32) < 0x10000 => {
                let _ = write!(out, "\\u{:04x}", c as u32);
            }
            c => {
                let _ = write!(out, "\\U{:08x}", c as u32);
            }
        }
    }
    out.push('"');
    out
}

/// Go's `unicode.IsPrint` for assigned code points: letters, marks, numbers,
/// punctuation, symbols and U+0020. Controls, format characters, private use, and
/// separators other than the ASCII space are not printable.
fn go_is_print(c: char) -> bool {
    if c == ' ' {
        return true;
    }
    if c.is_control() {
        return false;
    }
    !matches!(
        c as u32,
        0x00A0
            | 0x00AD
            | 0x0600..=0x0605
            | 0x061C
            | 0x06DD
            | 0x070F
            | 0x0890..=0x0891
            | 0x08E2
            | 0x1680
            | 0x180E
            | 0x2000..=0x200F
            | 0x2028..=0x202F
            | 0x205F..=0x206F
            | 0x3000
            | 0xD800..=0xDFFF
            | 0xE000..=0xF8FF
            | 0xFEFF
            | 0xFFF9..=0xFFFB
            | 0xFFFE..=0xFFFF
            | 0x110BD
            | 0x110CD
            | 0x13430..=0x1343F
            | 0x1BCA0..=0x1BCA3
            | 0x1D173..=0x1D17A
            | 0xE0001
            | 0xE0020..=0xE007F
            | 0xF0000..=0x10FFFF
    )
}

/// Go's `%q` of a `[]string`: `["a" "b"]`, `[]` when empty.
pub fn go_quote_list(items: &[String]) -> String {
    let mut out = String::from("[");
    for (i, item) in items.iter().enumerate() {
        if i > 0 {
            out.push(' ');
        }
        out.push_str(&go_quote(item));
    }
    out.push(']');
    out
}

/// The text of Kubernetes' error aggregate (`utilerrors.NewAggregate(...).Error()`):
/// one error prints as itself; several print as `[a, b]` with duplicates dropped
/// (and as the single message when all are equal).
pub fn aggregate_errors(errors: &[String]) -> String {
    match errors {
        [] => String::new(),
        [one] => one.clone(),
        _ => {
            let mut seen: Vec<&str> = Vec::new();
            for e in errors {
                if !seen.contains(&e.as_str()) {
                    seen.push(e);
                }
            }
            if seen.len() == 1 {
                seen.concat()
            } else {
                format!("[{}]", seen.join(", "))
            }
        }
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    fn strings(v: &[&str]) -> Vec<String> {
        v.iter().map(|s| (*s).to_owned()).collect()
    }

    // ---- helpers

    #[test]
    fn go_quoting() {
        assert_eq!(go_quote("a"), r#""a""#);
        assert_eq!(go_quote(""), r#""""#);
        assert_eq!(go_quote("a\"b\\c"), r#""a\"b\\c""#);
        assert_eq!(
            go_quote("\u{7}\u{8}\u{c}\n\r\t\u{b}\u{0}\u{1b}\u{7f}"),
            r#""\a\b\f\n\r\t\v\x00\x1b\x7f""#
        );
        assert_eq!(go_quote("é日本 'x'"), "\"é日本 'x'\"");
        assert_eq!(go_quote("\u{85}\u{a0}\u{ad}"), r#""\u0085\u00a0\u00ad""#);
        assert_eq!(
            go_quote("\u{200b}\u{2028}\u{feff}"),
            r#""\u200b\u2028\ufeff""#
        );
        assert_eq!(go_quote("\u{e000}\u{f0000}"), r#""\ue000\U000f0000""#);
        assert_eq!(go_quote("😀"), "\"😀\"");
        assert_eq!(go_quote_list(&[]), "[]");
        assert_eq!(go_quote_list(&strings(&["a"])), r#"["a"]"#);
        assert_eq!(
            go_quote_list(&strings(&["a", "b c", ""])),
            r#"["a" "b c" ""]"#
        );
    }

    #[test]
    fn aggregates() {
        assert_eq!(aggregate_errors(&[]), "");
        assert_eq!(aggregate_errors(&strings(&["a"])), "a");
        assert_eq!(aggregate_errors(&strings(&["a", "a"])), "a");
        assert_eq!(aggregate_errors(&strings(&["a", "b", "a"])), "[a, b]");
    }
}
