//! A parser for the GRUB script subset found in generated grub.cfg files: commands, quoting
//! and escapes, `if`/`elif`/`else`/`fi`, `menuentry` and `submenu` blocks, `function`
//! definitions, and loops (parsed, never run). The input is untrusted: nesting is limited
//! (`Budget::block_depth`) and every token is charged to the [`Meter`] as it is made, so the
//! syntax tree of a large file stops at the budget instead of growing with it.

use std::rc::Rc;

use crate::budget::{Meter, OVERHEAD};

/// One piece of a word, by how it was quoted.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Seg {
    /// Unquoted text: variables expand, and the result is split at white space.
    Plain(String),
    /// Double-quoted text: variables expand, no splitting.
    Quoted(String),
    /// Single-quoted or backslash-escaped text: taken literally.
    Literal(String),
}

/// A word of a command.
pub type Word = Vec<Seg>;

/// A parsed statement.
#[derive(Clone, Debug)]
pub enum Stmt {
    /// A simple command and its arguments.
    Cmd(Vec<Word>),
    /// `if COND; then BODY; [elif COND; then BODY;]... [else BODY;] fi`.
    If {
        /// Each condition with its body.
        arms: Vec<(Vec<Stmt>, Vec<Stmt>)>,
        /// The `else` body.
        otherwise: Vec<Stmt>,
    },
    /// `menuentry ARGS { BODY }` or `submenu ARGS { BODY }`.
    Menu {
        /// Whether this is a submenu.
        submenu: bool,
        /// Title and options.
        args: Vec<Word>,
        /// The body, run when the entry is chosen.
        body: Rc<Vec<Stmt>>,
    },
    /// `function NAME { BODY }`.
    Func(String, Rc<Vec<Stmt>>),
    /// A `while`/`until`/`for` loop: never run (generated configs do not rely on them).
    Loop,
}

#[derive(Clone, Debug, PartialEq, Eq)]
enum Tok {
    Word(Word),
    Sep,
    Open,
    Close,
}

fn plain_is(w: &Word, s: &str) -> bool {
    matches!(w.as_slice(), [Seg::Plain(p)] if p == s)
}

/// Splits `src` into tokens, charging each to `meter` (twice its text and a fixed overhead per
/// piece: the heap blocks of a token come near that, and blocks hold their own copies).
fn lex(src: &str, meter: &Meter) -> Result<Vec<Tok>, String> {
    let mut toks = Vec::new();
    let mut chars = src.chars().peekable();
    let mut word: Word = Vec::new();
    let mut plain = String::new();
    let flush_plain = |word: &mut Word, plain: &mut String| {
        if !plain.is_empty() {
            word.push(Seg::Plain(std::mem::take(plain)));
        }
    };
    let end_word = |toks: &mut Vec<Tok>, word: &mut Word, plain: &mut String| {
        flush_plain(word, plain);
        if !word.is_empty() {
            let w = std::mem::take(word);
            let text: usize = w.iter().map(|s| seg_text(s).len()).sum();
            meter.bytes(2 * (OVERHEAD * w.len() as u64 + text as u64))?;
            toks.push(if plain_is(&w, "{") {
                Tok::Open
            } else if plain_is(&w, "}") {
                Tok::Close
            } else {
                Tok::Word(w)
            });
        }
        Ok::<(), String>(())
    };
    let sep = |toks: &mut Vec<Tok>| {
        meter.bytes(OVERHEAD)?;
        toks.push(Tok::Sep);
        Ok::<(), String>(())
    };
    while let Some(c) = chars.next() {
        match c {
            '#' if word.is_empty() && plain.is_empty() => {
                for c in chars.by_ref() {
                    if c == '\n' {
                        break;
                    }
                }
                end_word(&mut toks, &mut word, &mut plain)?;
                sep(&mut toks)?;
            }
            ' ' | '\t' | '\r' => end_word(&mut toks, &mut word, &mut plain)?,
            '\n' | ';' => {
                end_word(&mut toks, &mut word, &mut plain)?;
                sep(&mut toks)?;
            }
            '\\' => match chars.next() {
                Some('\n') | None => {}
                Some(e) => {
                    flush_plain(&mut word, &mut plain);
                    word.push(Seg::Literal(e.to_string()));
                }
            },
            '\'' => {
                flush_plain(&mut word, &mut plain);
                let s: String = chars.by_ref().take_while(|&c| c != '\'').collect();
                word.push(Seg::Literal(s));
            }
            '"' => {
                flush_plain(&mut word, &mut plain);
                let mut s = String::new();
                while let Some(c) = chars.next() {
                    match c {
                        '"' => break,
                        '\\' if matches!(chars.peek(), Some('"' | '\\' | '$' | '\n')) => {
                            let e = chars.next().unwrap_or('\\');
                            if e != '\n' {
                                if !s.is_empty() {
                                    word.push(Seg::Quoted(std::mem::take(&mut s)));
                                }
                                word.push(Seg::Literal(e.to_string()));
                            }
                        }
                        c => s.push(c),
                    }
                }
                word.push(Seg::Quoted(s));
            }
            c => plain.push(c),
        }
    }
    end_word(&mut toks, &mut word, &mut plain)?;
    Ok(toks)
}

struct Parser {
    toks: Vec<Tok>,
    pos: usize,
    depth: u32,
    max_depth: u32,
}

/// What ended a list of statements.
#[derive(PartialEq)]
enum End {
    Keyword(&'static str),
    Close,
    Eof,
}

impl Parser {
    fn peek(&self) -> Option<&Tok> {
        self.toks.get(self.pos)
    }

    /// Parses statements until one of the keywords `stop` starts a command, a `}` (if
    /// `close` is allowed) or the end.
    fn list(&mut self, stop: &[&'static str], close: bool) -> Result<(Vec<Stmt>, End), String> {
        self.depth += 1;
        if self.depth > self.max_depth {
            return Err(format!("blocks nest deeper than {} levels", self.max_depth));
        }
        let mut out = Vec::new();
        let end = loop {
            match self.peek() {
                None => break End::Eof,
                Some(Tok::Sep) => self.pos += 1,
                Some(Tok::Close) if close => {
                    self.pos += 1;
                    break End::Close;
                }
                Some(Tok::Close) | Some(Tok::Open) => {
                    return Err("unexpected brace".into());
                }
                Some(Tok::Word(w)) => {
                    if let Some(k) = stop.iter().find(|k| plain_is(w, k)) {
                        self.pos += 1;
                        break End::Keyword(k);
                    }
                    out.push(self.statement()?);
                }
            }
        };
        self.depth -= 1;
        Ok((out, end))
    }

    fn expect_end(&self, got: End, want: End, what: &str) -> Result<(), String> {
        if got == want {
            Ok(())
        } else {
            Err(format!("unterminated {what}"))
        }
    }

    fn statement(&mut self) -> Result<Stmt, String> {
        let Some(Tok::Word(first)) = self.peek().cloned() else {
            return Err("expected a command".into());
        };
        let kw = |k: &str| plain_is(&first, k);
        if kw("if") {
            self.pos += 1;
            let mut arms = Vec::new();
            loop {
                let (cond, end) = self.list(&["then"], false)?;
                self.expect_end(end, End::Keyword("then"), "if")?;
                let (body, end) = self.list(&["elif", "else", "fi"], false)?;
                arms.push((cond, body));
                match end {
                    End::Keyword("elif") => continue,
                    End::Keyword("else") => {
                        let (otherwise, end) = self.list(&["fi"], false)?;
                        self.expect_end(end, End::Keyword("fi"), "if")?;
                        return Ok(Stmt::If { arms, otherwise });
                    }
                    End::Keyword("fi") => {
                        return Ok(Stmt::If {
                            arms,
                            otherwise: Vec::new(),
                        })
                    }
                    _ => return Err("unterminated if".into()),
                }
            }
        }
        if kw("menuentry") || kw("submenu") || kw("function") {
            self.pos += 1;
            let mut args = Vec::new();
            loop {
                match self.peek().cloned() {
                    Some(Tok::Word(w)) => {
                        args.push(w);
                        self.pos += 1;
                    }
                    Some(Tok::Open) => {
                        self.pos += 1;
                        break;
                    }
                    // `function f` and its `{` may be on different lines.
                    Some(Tok::Sep) if kw("function") => self.pos += 1,
                    _ => return Err("a menuentry, submenu or function without { }".into()),
                }
            }
            let (body, end) = self.list(&[], true)?;
            self.expect_end(end, End::Close, "block")?;
            if kw("function") {
                let name = args.first().map(literal_text).unwrap_or_default();
                return Ok(Stmt::Func(name, Rc::new(body)));
            }
            return Ok(Stmt::Menu {
                submenu: kw("submenu"),
                args,
                body: Rc::new(body),
            });
        }
        if kw("while") || kw("until") || kw("for") {
            self.pos += 1;
            let (_, end) = self.list(&["do"], false)?;
            self.expect_end(end, End::Keyword("do"), "loop")?;
            let (_, end) = self.list(&["done"], false)?;
            self.expect_end(end, End::Keyword("done"), "loop")?;
            return Ok(Stmt::Loop);
        }
        let mut words = Vec::new();
        // Moved out of the token list (never looked at again), not copied: a command of tens
        // of thousands of words would otherwise exist twice.
        while let Some(Tok::Word(w)) = self.toks.get_mut(self.pos) {
            words.push(std::mem::take(w));
            self.pos += 1;
        }
        Ok(Stmt::Cmd(words))
    }
}

fn seg_text(s: &Seg) -> &str {
    match s {
        Seg::Plain(t) | Seg::Quoted(t) | Seg::Literal(t) => t,
    }
}

/// The text of a word with no expansion (for names).
pub fn literal_text(w: &Word) -> String {
    w.iter().map(seg_text).collect()
}

/// Parses a whole grub.cfg, charging its syntax to `meter`.
pub(crate) fn parse(src: &str, meter: &Meter) -> Result<Vec<Stmt>, String> {
    let mut p = Parser {
        toks: lex(src, meter)?,
        pos: 0,
        depth: 0,
        max_depth: meter.budget().block_depth,
    };
    let (stmts, end) = p.list(&[], false)?;
    match end {
        End::Eof => Ok(stmts),
        _ => Err("unexpected keyword".into()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::budget::Budget;

    fn parse(src: &str) -> Result<Vec<Stmt>, String> {
        super::parse(src, &Meter::new(Budget::default()))
    }

    #[test]
    fn words_quotes_and_blocks() {
        let s = parse(
            "set a='x y' # comment\nif [ \"${a}\" ] ; then b=1; elif false; then c=2; else d=3; fi\n\
             menuentry 'T' --id t {\n linux /v\\ z $a\n}\nfunction f { echo; }\nfor x in 1; do y; done",
        )
        .unwrap();
        assert_eq!(s.len(), 5);
        let Stmt::Cmd(w) = &s[0] else { panic!() };
        assert_eq!(
            w[1],
            vec![Seg::Plain("a=".into()), Seg::Literal("x y".into())]
        );
        let Stmt::If { arms, otherwise } = &s[1] else {
            panic!()
        };
        assert_eq!((arms.len(), otherwise.len()), (2, 1));
        let Stmt::Menu {
            submenu,
            args,
            body,
        } = &s[2]
        else {
            panic!()
        };
        assert!(!submenu);
        assert_eq!(args.len(), 3);
        let Stmt::Cmd(l) = &body[0] else { panic!() };
        assert_eq!(literal_text(&l[1]), "/v z");
        assert!(matches!(&s[3], Stmt::Func(n, b) if n == "f" && b.len() == 1));
        assert!(matches!(s[4], Stmt::Loop));
    }

    #[test]
    fn malformed_input_is_an_error_not_a_panic() {
        for bad in [
            "if x; then",
            "menuentry a {",
            "}",
            "if a; fi",
            "{",
            &"if a; then ".repeat(100),
        ] {
            assert!(parse(bad).is_err(), "{bad}");
        }
    }
}
