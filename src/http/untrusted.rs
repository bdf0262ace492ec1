//! Text a client chose (a query parameter's name, a parser's quote of the
//! body) made safe to echo in an error message and to write to the log:
//! control characters and line breaks become visible escapes, so one
//! request can never write a line of its own into the log, and an echoed
//! name is cut to [`MAX_ECHOED_CHARS`]. Every error message is escaped
//! as a whole where the answer is built, so text is escaped exactly once.

use std::borrow::Cow;
use std::fmt::Write as _;

/// Most characters of a client's text echoed back in an error message.
pub const MAX_ECHOED_CHARS: usize = 64;

/// Whether `c` must not reach a message or a log line as it is: ASCII and
/// C1 control characters (newlines, carriage returns, ESC, DEL) and the
/// Unicode line and paragraph separators.
fn needs_escape(c: char) -> bool {
    c.is_control() || c == '\u{2028}' || c == '\u{2029}'
}

/// `text` with every control character and line break written as an
/// escape (`\n`, `\r`, `\t`, `\u{1b}`) and every backslash doubled, so
/// the escaped form cannot be mistaken for a character the client sent.
/// Borrowed when there is nothing to escape.
#[must_use]
pub fn escape(text: &str) -> Cow<'_, str> {
    if !text.chars().any(|c| needs_escape(c) || c == '\\') {
        return Cow::Borrowed(text);
    }
    let mut escaped = String::with_capacity(text.len() + 8);
    for c in text.chars() {
        match c {
            '\\' => escaped.push_str("\\\\"),
            '\n' => escaped.push_str("\\n"),
            '\r' => escaped.push_str("\\r"),
            '\t' => escaped.push_str("\\t"),
            c if needs_escape(c) => {
                // Writing into a String cannot fail.
                let _ = write!(escaped, "\\u{{{:x}}}", u32::from(c));
            }
            c => escaped.push(c),
        }
    }
    Cow::Owned(escaped)
}

/// A client's text to echo, cut to [`MAX_ECHOED_CHARS`] characters (with
/// `…` when cut); [`escape`] it where it is written.
#[must_use]
pub fn cut(text: &str) -> Cow<'_, str> {
    match text.char_indices().nth(MAX_ECHOED_CHARS) {
        None => Cow::Borrowed(text),
        Some((end, _)) => Cow::Owned(format!("{}…", &text[..end])),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn plain_text_is_borrowed_unchanged() {
        assert!(matches!(escape("status"), Cow::Borrowed("status")));
        assert_eq!(escape("näme ✓"), "näme ✓");
    }

    #[test]
    fn line_breaks_and_control_characters_become_visible_escapes() {
        assert_eq!(
            escape("x\nERROR webhookd: forged\r\t\u{1b}[31m\u{7f}\u{85}\u{2028}"),
            "x\\nERROR webhookd: forged\\r\\t\\u{1b}[31m\\u{7f}\\u{85}\\u{2028}"
        );
        assert!(!escape("a\nb\u{0}c").chars().any(char::is_control));
    }

    #[test]
    fn a_backslash_is_doubled_so_escapes_cannot_be_forged() {
        assert_eq!(escape("a\\nb"), "a\\\\nb");
        assert_ne!(escape("a\\nb"), escape("a\nb"));
    }

    #[test]
    fn echoed_text_is_cut_on_a_character_boundary() {
        let long = "é".repeat(MAX_ECHOED_CHARS + 10);
        let cut = cut(&long);
        assert_eq!(cut.chars().count(), MAX_ECHOED_CHARS + 1);
        assert!(cut.ends_with('…'));
        assert!(matches!(super::cut("short"), Cow::Borrowed("short")));
    }
}
