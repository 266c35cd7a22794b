//! Small builders over the `nftables` crate's JSON schema, so rule code reads like nft syntax.

use std::borrow::Cow;

use nftables::expr::{
    Expression, Meta, MetaKey, NamedExpression, Payload, PayloadField, Prefix, Range,
};
use nftables::schema::{Chain, NfCmd, NfListObject, NfObject, Nftables, Rule, Table};
use nftables::stmt::{Match, Operator, Statement};
use nftables::types::{NfChainPolicy, NfChainType, NfFamily, NfHook};

/// A string immediate (interface names, keywords such as `arp` or `icmp`).
pub fn s(v: impl Into<String>) -> Expression<'static> {
    Expression::String(Cow::Owned(v.into()))
}

/// A number immediate.
pub fn n(v: u32) -> Expression<'static> {
    Expression::Number(v)
}

/// `meta KEY`
pub fn meta(key: MetaKey) -> Expression<'static> {
    Expression::Named(NamedExpression::Meta(Meta { key }))
}

/// `PROTO FIELD` (e.g. `ip saddr`, `tcp dport`).
pub fn payload(protocol: &'static str, field: &'static str) -> Expression<'static> {
    Expression::Named(NamedExpression::Payload(Payload::PayloadField(
        PayloadField {
            protocol: Cow::Borrowed(protocol),
            field: Cow::Borrowed(field),
        },
    )))
}

/// `ADDR/LEN`
pub fn prefix(addr: impl Into<String>, len: u8) -> Expression<'static> {
    Expression::Named(NamedExpression::Prefix(Prefix {
        addr: Box::new(s(addr)),
        len: u32::from(len),
    }))
}

/// `LO-HI`
pub fn range(lo: u32, hi: u32) -> Expression<'static> {
    Expression::Range(Box::new(Range {
        range: [n(lo), n(hi)],
    }))
}

/// `{ a, b }` anonymous set.
pub fn set(items: Vec<Expression<'static>>) -> Expression<'static> {
    Expression::Named(NamedExpression::Set(
        items
            .into_iter()
            .map(nftables::expr::SetItem::Element)
            .collect(),
    ))
}

/// `LEFT == RIGHT`
pub fn eq(left: Expression<'static>, right: Expression<'static>) -> Statement<'static> {
    Statement::Match(Match {
        left,
        right,
        op: Operator::EQ,
    })
}

/// `LEFT != RIGHT`
pub fn ne(left: Expression<'static>, right: Expression<'static>) -> Statement<'static> {
    Statement::Match(Match {
        left,
        right,
        op: Operator::NEQ,
    })
}

pub fn accept() -> Statement<'static> {
    Statement::Accept(None)
}

pub fn drop() -> Statement<'static> {
    Statement::Drop(None)
}

pub fn counter() -> Statement<'static> {
    Statement::Counter(nftables::stmt::Counter::Anonymous(None))
}

pub fn jump(chain: &str) -> Statement<'static> {
    Statement::Jump(nftables::stmt::JumpTarget {
        target: Cow::Owned(chain.to_string()),
    })
}

/// A table's definition, built up chain by chain and applied as one "replace" transaction.
pub struct TableBuilder {
    family: NfFamily,
    name: String,
    objects: Vec<NfObject<'static>>,
}

impl TableBuilder {
    pub fn new(family: NfFamily, name: &str) -> Self {
        TableBuilder {
            family,
            name: name.to_string(),
            objects: vec![],
        }
    }

    /// A base chain hooked at `hook` with `priority` and policy accept.
    pub fn base_chain(
        &mut self,
        name: &str,
        kind: NfChainType,
        hook: NfHook,
        priority: i32,
    ) -> &mut Self {
        self.objects
            .push(NfObject::CmdObject(NfCmd::Add(NfListObject::Chain(
                Chain {
                    family: self.family,
                    table: Cow::Owned(self.name.clone()),
                    name: Cow::Owned(name.to_string()),
                    _type: Some(kind),
                    hook: Some(hook),
                    prio: Some(priority),
                    policy: Some(NfChainPolicy::Accept),
                    ..Chain::default()
                },
            ))));
        self
    }

    /// A regular chain (a jump target).
    pub fn chain(&mut self, name: &str) -> &mut Self {
        self.objects
            .push(NfObject::CmdObject(NfCmd::Add(NfListObject::Chain(
                Chain {
                    family: self.family,
                    table: Cow::Owned(self.name.clone()),
                    name: Cow::Owned(name.to_string()),
                    ..Chain::default()
                },
            ))));
        self
    }

    /// A rule appended to `chain`.
    pub fn rule(&mut self, chain: &str, expr: Vec<Statement<'static>>) -> &mut Self {
        self.objects
            .push(NfObject::CmdObject(NfCmd::Add(NfListObject::Rule(Rule {
                family: self.family,
                table: Cow::Owned(self.name.clone()),
                chain: Cow::Owned(chain.to_string()),
                expr: Cow::Owned(expr),
                handle: None,
                index: None,
                comment: None,
            }))));
        self
    }

    /// `add table; delete table; add table; <chains and rules>` in one batch: nft applies a batch as
    /// one kernel transaction, so the table is replaced atomically (no window without rules) and
    /// applying the same definition twice yields the same table.
    pub fn replace(self) -> Nftables<'static> {
        let table = || {
            NfListObject::Table(Table {
                family: self.family,
                name: Cow::Owned(self.name.clone()),
                handle: None,
            })
        };
        let mut objects = vec![
            NfObject::CmdObject(NfCmd::Add(table())),
            NfObject::CmdObject(NfCmd::Delete(table())),
            NfObject::CmdObject(NfCmd::Add(table())),
        ];
        objects.extend(self.objects.iter().cloned());
        Nftables {
            objects: Cow::Owned(objects),
        }
    }
}
