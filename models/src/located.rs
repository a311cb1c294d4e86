//! Components and links with the JSON path they were read from.

use std::rc::Rc;

use crate::component::Component;
use crate::diagnostic::JsonPath;
use crate::link::Link;
use crate::model::{DeploymentModel, Megamodel, Template};

#[derive(Debug, Clone)]
pub struct Located<'a, T> {
    /// The path of the array the item is in (shared: most paths are never
    /// needed, so each is only built for a problem).
    within: Rc<JsonPath>,
    index: usize,
    /// The id of the subsystem the item is nested in, if any.
    pub nested_in: Option<&'a str>,
    pub item: &'a T,
}

impl<T> Located<'_, T> {
    /// The item's JSON path.
    pub fn path(&self) -> JsonPath {
        self.within.index(self.index)
    }
}

/// A model's components and links, in document order, with their paths.
#[derive(Debug, Default)]
pub struct Document<'a> {
    pub components: Vec<Located<'a, Component>>,
    pub links: Vec<Located<'a, Link>>,
}

impl<'a> Document<'a> {
    pub fn of_megamodel(mm: &'a Megamodel) -> Self {
        let mut doc = Document::default();
        let root = JsonPath::root();
        for (i, s) in mm.subsystems.iter().enumerate() {
            doc.add(
                &root.key("subsystems").index(i),
                s.id.as_deref(),
                &s.components,
                &s.links,
            );
        }
        doc.add(&root, None, &mm.components, &mm.links);
        doc
    }

    pub fn of_model(m: &'a DeploymentModel) -> Self {
        let mut doc = Document::default();
        doc.add(&JsonPath::root(), m.id.as_deref(), &m.components, &m.links);
        doc
    }

    pub fn of_template(t: &'a Template) -> Self {
        let mut doc = Document::default();
        doc.add(&JsonPath::root(), None, &t.components, &t.links);
        doc
    }

    fn add(
        &mut self,
        base: &JsonPath,
        nested_in: Option<&'a str>,
        components: &'a [Component],
        links: &'a [Link],
    ) {
        let within = Rc::new(base.key("components"));
        self.components
            .extend(components.iter().enumerate().map(|(index, c)| Located {
                within: within.clone(),
                index,
                nested_in,
                item: c,
            }));
        let within = Rc::new(base.key("links"));
        self.links
            .extend(links.iter().enumerate().map(|(index, l)| Located {
                within: within.clone(),
                index,
                nested_in,
                item: l,
            }));
    }
}
