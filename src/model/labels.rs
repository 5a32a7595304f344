//! AudioSet class labels (`index,mid,display_name`).

use std::path::Path;

use anyhow::{bail, Context, Result};

/// One class.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Label {
    /// AudioSet machine id, e.g. `/m/032s66`.
    pub id: String,
    /// Display name, e.g. `Gunshot, gunfire`.
    pub name: String,
}

/// All classes of a model, in output order.
#[derive(Debug, Clone)]
pub struct Labels(Vec<Label>);

impl Labels {
    /// Reads a labels CSV with a header row; rows must be in index order.
    pub fn load(path: &Path) -> Result<Labels> {
        let mut rdr = csv::Reader::from_path(path)
            .with_context(|| format!("{}: cannot read labels", path.display()))?;
        let mut v = Vec::new();
        for (i, rec) in rdr.records().enumerate() {
            let rec = rec.with_context(|| format!("{}: bad CSV row {}", path.display(), i + 2))?;
            if rec.len() < 3 {
                bail!(
                    "{}: row {} has {} columns, expected index,mid,display_name",
                    path.display(),
                    i + 2,
                    rec.len()
                );
            }
            let idx: usize = rec[0].trim().parse().with_context(|| {
                format!("{}: row {}: bad index {:?}", path.display(), i + 2, &rec[0])
            })?;
            if idx != i {
                bail!(
                    "{}: row {} has index {idx}, expected {i}",
                    path.display(),
                    i + 2
                );
            }
            v.push(Label {
                id: rec[1].trim().to_string(),
                name: rec[2].trim().to_string(),
            });
        }
        Ok(Labels(v))
    }

    /// Builds a label set from names (ids left empty); for tests and tools.
    pub fn from_names<S: AsRef<str>>(names: &[S]) -> Labels {
        Labels(
            names
                .iter()
                .map(|n| Label {
                    id: String::new(),
                    name: n.as_ref().to_string(),
                })
                .collect(),
        )
    }

    /// Number of classes.
    pub fn len(&self) -> usize {
        self.0.len()
    }

    /// True when there are no classes.
    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }

    /// Label of class `i`.
    pub fn get(&self, i: usize) -> Option<&Label> {
        self.0.get(i)
    }

    /// All labels in order.
    pub fn iter(&self) -> impl Iterator<Item = &Label> {
        self.0.iter()
    }

    /// Index of the class whose display name or id equals `key` (case-insensitive).
    pub fn find(&self, key: &str) -> Option<usize> {
        let key = key.trim();
        self.0
            .iter()
            .position(|l| l.name.eq_ignore_ascii_case(key) || l.id == key)
    }
}
