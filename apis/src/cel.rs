//! Builders for the CEL rules (`x-kubernetes-validations`) the kinds share.
//!
//! Kubernetes CEL can parse IPs and CIDRs (`isIP`, `cidr(..).containsIP`) but cannot order two
//! addresses, which range checks need. [`ipv4_int`] spells an IPv4 address out as an integer
//! from its four octets; callers guard it with [`is_ipv4`] so it only ever sees a valid address.

use kube::core::{Message, Rule};

/// CEL that is true when the string expression `e` is an IPv4 address.
pub fn is_ipv4(e: &str) -> String {
    format!("(isIP({e}) && ip({e}).family() == 4)")
}

/// CEL that is true when the string expression `e` is an IPv4 CIDR.
pub fn is_cidr4(e: &str) -> String {
    format!("(isCIDR({e}) && cidr({e}).ip().family() == 4)")
}

/// CEL for the IPv4 address `e` as an integer, so addresses can be ordered. Only meaningful
/// where [`is_ipv4`] holds.
pub fn ipv4_int(e: &str) -> String {
    let octet = |i: usize| format!("int({e}.split('.')[{i}])");
    format!(
        "({} * 16777216 + {} * 65536 + {} * 256 + {})",
        octet(0),
        octet(1),
        octet(2),
        octet(3)
    )
}

/// The field this rule is on may not change once set.
pub fn immutable(field: &str) -> Rule {
    Rule::new("self == oldSelf").message(Message::Message(format!("{field} is immutable")))
}

/// An optional string field, when set, must be an IPv4 address.
pub fn ipv4(field: &str) -> Rule {
    Rule::new(is_ipv4("self")).message(Message::Message(format!("{field} must be an IPv4 address")))
}

/// An optional string field, when set, must be an IPv4 CIDR.
pub fn cidr4(field: &str) -> Rule {
    Rule::new(is_cidr4("self")).message(Message::Message(format!(
        "{field} must be an IPv4 CIDR such as 10.0.0.0/24"
    )))
}

/// A quantity field must be greater than zero.
pub fn positive_quantity(field: &str) -> Rule {
    Rule::new("isQuantity(string(self)) && quantity(string(self)).isGreaterThan(quantity('0'))")
        .message(Message::Message(format!(
            "{field} must be a quantity greater than zero"
        )))
}

/// A `{start, end}` object must not end before it starts.
pub fn ordered_range(what: &str) -> Rule {
    Rule::new("self.start <= self.end").message(Message::Message(format!(
        "{what}: start must not be after end"
    )))
}
