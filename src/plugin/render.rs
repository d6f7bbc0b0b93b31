//! How the plugin's answers are printed: aligned columns for a terminal
//! (coloured only when it is one and `NO_COLOR` is unset), or JSON and YAML
//! for scripts.

use std::io::IsTerminal;

use serde::Serialize;

/// The output formats of `-o`.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, clap::ValueEnum)]
pub enum Format {
    #[default]
    Table,
    Json,
    Yaml,
}

/// How a cell is coloured on a terminal.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Tone {
    Plain,
    Good,
    Pending,
    Bad,
}

impl Tone {
    fn code(self) -> Option<&'static str> {
        match self {
            Tone::Plain => None,
            Tone::Good => Some("32"),
            Tone::Pending => Some("33"),
            Tone::Bad => Some("31"),
        }
    }
}

/// A table: a heading of `key value` lines, then rows under column titles.
pub struct Table {
    pub heading: Vec<(&'static str, String)>,
    pub titles: Vec<&'static str>,
    /// Each row's cells, and the tone of its cell in column `toned`.
    pub rows: Vec<(Vec<String>, Tone)>,
    pub toned: usize,
    pub summary: String,
}

impl Table {
    /// The table as text, coloured when `colour`.
    pub fn render(&self, colour: bool) -> String {
        let mut out = String::new();
        let key_width = self.heading.iter().map(|(k, _)| k.len()).max().unwrap_or(0);
        for (key, value) in &self.heading {
            out.push_str(&format!("{key:key_width$}  {value}\n"));
        }
        if !self.heading.is_empty() {
            out.push('\n');
        }
        let widths: Vec<usize> = (0..self.titles.len())
            .map(|column| {
                self.rows
                    .iter()
                    .map(|(cells, _)| cells.get(column).map_or(0, String::len))
                    .chain([self.titles[column].len()])
                    .max()
                    .unwrap_or(0)
            })
            .collect();
        let line = |cells: &[String], tone: Tone| {
            let last = cells.len().saturating_sub(1);
            let mut text = String::new();
            for (column, cell) in cells.iter().enumerate() {
                let padded = if column == last {
                    cell.clone()
                } else {
                    format!("{cell:width$}  ", width = widths[column])
                };
                match tone.code() {
                    Some(code) if colour && column == self.toned => {
                        text.push_str(&format!("\x1b[{code}m{padded}\x1b[0m"))
                    }
                    _ => text.push_str(&padded),
                }
            }
            text.trim_end().to_string() + "\n"
        };
        let titles: Vec<String> = self.titles.iter().map(|t| t.to_string()).collect();
        out.push_str(&line(&titles, Tone::Plain));
        for (cells, tone) in &self.rows {
            out.push_str(&line(cells, *tone));
        }
        if !self.summary.is_empty() {
            out.push('\n');
            out.push_str(&self.summary);
            out.push('\n');
        }
        out
    }
}

/// Whether standard output is a terminal that wants colour.
pub fn colour_wanted() -> bool {
    std::io::stdout().is_terminal() && std::env::var_os("NO_COLOR").is_none()
}

/// Prints `value` in `format`, or `table` for the table format.
pub fn print(
    format: Format,
    value: &impl Serialize,
    table: impl FnOnce() -> Table,
) -> anyhow::Result<()> {
    match format {
        Format::Table => print!("{}", table().render(colour_wanted())),
        Format::Json => println!("{}", serde_json::to_string_pretty(value)?),
        Format::Yaml => print!("{}", serde_saphyr::to_string(value)?),
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn table() -> Table {
        Table {
            heading: vec![("Replika", "platform/creds".into())],
            titles: vec!["NAMESPACE", "ACTION", "DETAIL"],
            rows: vec![
                (
                    vec!["team-a".into(), "create".into(), String::new()],
                    Tone::Pending,
                ),
                (
                    vec!["b".into(), "conflict".into(), "someone's".into()],
                    Tone::Bad,
                ),
            ],
            toned: 1,
            summary: "1 to create, 1 conflict".into(),
        }
    }

    #[test]
    fn columns_are_aligned_and_plain_without_a_terminal() {
        assert_eq!(
            table().render(false),
            "Replika  platform/creds\n\nNAMESPACE  ACTION    DETAIL\nteam-a     create\nb          conflict  someone's\n\n1 to create, 1 conflict\n"
        );
    }

    #[test]
    fn only_the_state_column_is_coloured_on_a_terminal() {
        let text = table().render(true);
        assert!(text.contains("\x1b[31mconflict  \x1b[0m"), "{text:?}");
        assert!(text.contains("\x1b[33mcreate    \x1b[0m"), "{text:?}");
        assert!(!text.contains("\x1b[31mb"), "{text:?}");
    }
}
