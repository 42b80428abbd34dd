//! The one table of calls, and what is generated from it.
//!
//! Every service declares its operations once, in a table macro beside its message
//! types (`storage_table!` in `storage.rs`, `runtime_table!` in `runtime.rs`, ...).
//! A table row names the operation's method, request, reply, stream item and input
//! (for streams), which services may call it, and its reply deadline:
//!
//! ```text
//! layer_stat(LayerStat) -> LayerInfo; callers [Images, Runtime];
//! layer_export(LayerExport) -> (), stream ByteChunk; callers [Images];
//! layer_apply(LayerApply) -> (), stream LayerApplied, input ByteChunk; callers [Images], timeout |_| secs(120);
//! volume_list(VolumeList) -> Vec<docker::Volume>; callers [Gateway], idempotent;
//! ```
//!
//! `idempotent` marks an operation that only reads: the typed client sends it once
//! more when the instance serving it died under the first request.
//!
//! A table macro takes the path of a generator macro and hands it its rows (the
//! callback pattern), so one table feeds several generators:
//!
//! * here, [`__api!`](crate::__api): the [`Rpc`](crate::Rpc) /
//!   [`StreamRpc`](crate::StreamRpc) / [`DuplexRpc`](crate::DuplexRpc) impls, the
//!   module's `OPS` and `CALLS` lists, and the service's API trait (`StorageApi`:
//!   signatures only, no I/O);
//! * in `shared/bus`: the typed client (`StorageClient`, which implements the trait
//!   over the bus) and the server adapter (`serve_storage`, which serves any
//!   implementation of the trait on the bus);
//! * the NATS permissions of every bus user ([`permissions`]) and the call graph in
//!   docs/architecture.md ([`call_graph_markdown`]) read `CALLS`.
//!
//! The method name is the operation's name in snake case (a unit test checks it).
//! Streams cross the trait as [`BusStream`]s: an operation with a stream answers
//! `(reply, items)`; one with an input also takes the caller's input stream.

use std::pin::Pin;
use std::time::Duration;

use crate::subject::{self, Service};
use crate::BusError;

/// A stream of items crossing a service boundary (an answer's items, or a caller's
/// input). An `Err` item ends the stream with that error; the end of the stream is
/// the normal end. Dropping it tells the other side to stop.
pub type BusStream<T> = Pin<Box<dyn futures_core::Stream<Item = Result<T, BusError>> + Send + 'static>>;

/// A reply deadline of `n` seconds (for `timeout` in the tables).
pub const fn secs(n: u64) -> Duration {
    Duration::from_secs(n)
}

/// The longest a caller waits for any reply. Every table timeout is clamped to it,
/// and the bus lets a service answer a request for this long (`allow_responses`).
pub const MAX_REPLY_WAIT: Duration = Duration::from_secs(2 * 3600);

/// Who may call: a service, or `Admin` (the `berth` CLI). One bus user each.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Caller {
    Service(Service),
    Admin,
}

/// The services by name, as the tables write them (`callers [Gateway, Runtime]`).
#[allow(non_upper_case_globals)]
impl Caller {
    pub const Gateway: Caller = Caller::Service(Service::Gateway);
    pub const Images: Caller = Caller::Service(Service::Images);
    pub const Storage: Caller = Caller::Service(Service::Storage);
    pub const Runtime: Caller = Caller::Service(Service::Runtime);
    pub const Network: Caller = Caller::Service(Service::Network);
    pub const Builder: Caller = Caller::Service(Service::Builder);
    pub const Swarm: Caller = Caller::Service(Service::Swarm);
}

impl Caller {
    /// Every service, then `Admin`.
    pub const ALL: [Caller; Service::ALL.len() + 1] = {
        let mut all = [Caller::Admin; Service::ALL.len() + 1];
        let mut i = 0;
        while i < Service::ALL.len() {
            all[i] = Caller::Service(Service::ALL[i]);
            i += 1;
        }
        all
    };

    /// The bus user name (the service's name, or `admin`).
    pub fn user(self) -> &'static str {
        match self {
            Caller::Service(s) => s.name(),
            Caller::Admin => "admin",
        }
    }

    pub fn service(self) -> Option<Service> {
        match self {
            Caller::Service(s) => Some(s),
            Caller::Admin => None,
        }
    }

    pub fn of(svc: Service) -> Caller {
        Caller::Service(svc)
    }

    pub fn from_user(user: &str) -> Option<Caller> {
        Caller::ALL.into_iter().find(|c| c.user() == user)
    }
}

/// The shape of an operation.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    /// Request, reply.
    Unary,
    /// Request, reply, then a stream of items from the service.
    Stream,
    /// A stream both ways: items from the service, input from the caller.
    Duplex,
}

/// One row of a table.
#[derive(Debug, Clone, Copy)]
pub struct Op {
    pub service: Service,
    /// Docker's NounVerb, the last token of the subject.
    pub name: &'static str,
    /// The method of the API trait and of the client.
    pub method: &'static str,
    pub kind: Kind,
    /// Who may call it (the permissions are generated from this).
    pub callers: &'static [Caller],
    /// Marked `idempotent` in the table: asking twice does no harm (it only reads), so
    /// the typed client asks once more when the serving instance died under the
    /// first request (see `Rpc::IDEMPOTENT`).
    pub idempotent: bool,
}

impl Op {
    pub fn subject(&self, node: &str) -> String {
        subject::subject(self.service, node, self.name)
    }
}

/// Every operation of every service, table by table.
pub fn all_calls() -> impl Iterator<Item = &'static Op> {
    [
        crate::images::CALLS,
        crate::storage::CALLS,
        crate::runtime::CALLS,
        crate::network::CALLS,
        crate::builder::CALLS,
        crate::swarm::CALLS,
    ]
    .into_iter()
    .flatten()
}

/// The generator behind every table's own declarations (used by `bus-schema` itself;
/// see the module docs).
#[doc(hidden)]
#[macro_export]
macro_rules! __api {
    (
        service: $svc:ident, api: $api:ident, client: $client:ident, serve: $serve:ident, module: $module:ident,
        ops {
            $( $m:ident ($req:ident) -> $reply:ty $(, stream $item:ty $(, input $input:ty)?)? ;
               callers [$($c:ident),* $(,)?] $(, timeout $t:expr)? $(, idempotent $($never:ident)?)? ; )*
        }
    ) => {
        $( $crate::__api!(@rpc $svc, $req, $reply, [$($item $(, $input)?)?], [$($t)?], [$( idempotent $($never)? )?]); )*

        /// Every operation of this service, in table order.
        pub const OPS: &[&str] = &[ $( stringify!($req) ),* ];

        /// This service's table: each operation, its shape and its callers.
        pub const CALLS: &[$crate::contract::Op] = &[ $(
            $crate::contract::Op {
                service: $crate::Service::$svc,
                name: stringify!($req),
                method: stringify!($m),
                kind: $crate::__api!(@kind [$($item $(, $input)?)?]),
                callers: &[ $( $crate::contract::Caller::$c ),* ],
                idempotent: $crate::__api!(@idempotent [$( idempotent $($never)? )?]),
            }
        ),* ];

        #[doc = concat!("The ", stringify!($svc), " service's operations, one method per row of its table: ")]
        #[doc = concat!("implemented by the service, by `berth_bus::", stringify!($module), "::", stringify!($client), "` over the bus, ")]
        #[doc = concat!("and served on the bus by `berth_bus::", stringify!($module), "::", stringify!($serve), "`.")]
        pub trait $api: Send + Sync + 'static {
            $( $crate::__api!(@method $m, $req, $reply, [$($item $(, $input)?)?]); )*
        }

        #[doc = concat!("For unit-test fakes: the methods of [`", stringify!($api), "`] with a default body answering ")]
        #[doc = "NotImplemented, so a fake implements only what its test calls; every `Fake` is an"]
        #[doc = concat!("[`", stringify!($api), "`]. A service implements the API trait itself, where every method is required.")]
        pub trait Fake: Send + Sync + 'static {
            $( $crate::__api!(@fake $m, $req, $reply, [$($item $(, $input)?)?]); )*
        }

        impl<T: Fake> $api for T {
            $( $crate::__api!(@forward $m, $req, $reply, [$($item $(, $input)?)?]); )*
        }
    };

    (@rpc $svc:ident, $req:ident, $reply:ty, [$($rest:tt)*], [$($t:expr)?], [$($idem:ident)?]) => {
        impl $crate::Rpc for $req {
            const SERVICE: $crate::Service = $crate::Service::$svc;
            const OP: &'static str = stringify!($req);
            const IDEMPOTENT: bool = $crate::__api!(@idempotent [$($idem)?]);
            type Reply = $reply;
            $(
                fn timeout(&self) -> Option<::std::time::Duration> {
                    let f: fn(&Self) -> ::std::time::Duration = $t;
                    Some(f(self).min($crate::contract::MAX_REPLY_WAIT))
                }
            )?
        }
        $crate::__api!(@streams $req, [$($rest)*]);
    };
    (@streams $req:ident, []) => {};
    (@streams $req:ident, [$item:ty]) => {
        impl $crate::StreamRpc for $req {
            type Item = $item;
        }
    };
    (@streams $req:ident, [$item:ty, $input:ty]) => {
        $crate::__api!(@streams $req, [$item]);
        impl $crate::DuplexRpc for $req {
            type Input = $input;
        }
    };

    (@idempotent []) => { false };
    (@idempotent [idempotent]) => { true };

    (@kind []) => { $crate::contract::Kind::Unary };
    (@kind [$item:ty]) => { $crate::contract::Kind::Stream };
    (@kind [$item:ty, $input:ty]) => { $crate::contract::Kind::Duplex };

    (@method $m:ident, $req:ident, $reply:ty, []) => {
        $crate::__api!(@fn $m, concat!("`", stringify!($req), "`"), $req,
            (req: $req), Result<$reply, $crate::BusError>);
    };
    (@method $m:ident, $req:ident, $reply:ty, [$item:ty]) => {
        $crate::__api!(@fn $m, concat!("`", stringify!($req), "`: the reply, then a stream of items."), $req,
            (req: $req), Result<($reply, $crate::BusStream<$item>), $crate::BusError>);
    };
    (@method $m:ident, $req:ident, $reply:ty, [$item:ty, $input:ty]) => {
        $crate::__api!(@fn $m, concat!("`", stringify!($req), "`: reads the caller's `input`; the reply, then a stream of items."), $req,
            (req: $req, input: $crate::BusStream<$input>), Result<($reply, $crate::BusStream<$item>), $crate::BusError>);
    };

    (@fake $m:ident, $req:ident, $reply:ty, []) => {
        $crate::__api!(@fakefn $m, $req, (req: $req), Result<$reply, $crate::BusError>);
    };
    (@fake $m:ident, $req:ident, $reply:ty, [$item:ty]) => {
        $crate::__api!(@fakefn $m, $req, (req: $req), Result<($reply, $crate::BusStream<$item>), $crate::BusError>);
    };
    (@fake $m:ident, $req:ident, $reply:ty, [$item:ty, $input:ty]) => {
        $crate::__api!(@fakefn $m, $req, (req: $req, input: $crate::BusStream<$input>),
            Result<($reply, $crate::BusStream<$item>), $crate::BusError>);
    };
    (@fakefn $m:ident, $req:ident, ($($arg:ident : $argty:ty),*), $out:ty) => {
        fn $m(&self, $($arg: $argty),*) -> impl ::core::future::Future<Output = $out> + Send {
            $( let _ = $arg; )*
            async { Err($crate::BusError::not_implemented(concat!(stringify!($req), " is not implemented by this fake"))) }
        }
    };

    (@forward $m:ident, $req:ident, $reply:ty, []) => {
        $crate::__api!(@fwdfn $m, (req: $req), Result<$reply, $crate::BusError>);
    };
    (@forward $m:ident, $req:ident, $reply:ty, [$item:ty]) => {
        $crate::__api!(@fwdfn $m, (req: $req), Result<($reply, $crate::BusStream<$item>), $crate::BusError>);
    };
    (@forward $m:ident, $req:ident, $reply:ty, [$item:ty, $input:ty]) => {
        $crate::__api!(@fwdfn $m, (req: $req, input: $crate::BusStream<$input>),
            Result<($reply, $crate::BusStream<$item>), $crate::BusError>);
    };
    (@fwdfn $m:ident, ($($arg:ident : $argty:ty),*), $out:ty) => {
        fn $m(&self, $($arg: $argty),*) -> impl ::core::future::Future<Output = $out> + Send {
            <T as Fake>::$m(self, $($arg),*)
        }
    };

    // Every method is required: a service cannot forget one. (Test fakes implement
    // the table's `Fake` trait instead, whose methods have defaults; a cargo feature
    // for that would give the test build other features than the release build and
    // compile the whole workspace twice in CI.)
    (@fn $m:ident, $doc:expr, $req:ident, ($($arg:ident : $argty:ty),*), $out:ty) => {
        #[doc = $doc]
        fn $m(&self, $($arg: $argty),*) -> impl ::core::future::Future<Output = $out> + Send;
    };
}

/// Subjects a bus user may publish and subscribe to, generated from the tables.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Permissions {
    pub publish: Vec<String>,
    pub subscribe: Vec<String>,
}

/// Stream frames and credits travel on `_S.<publisher>.<subscriber>.<id>`: the
/// subscriber names the subject, only the publisher may publish there.
pub const STREAM_PREFIX: &str = "_S";

pub fn stream_subject(publisher: &str, subscriber: &str, id: &str) -> String {
    format!("{STREAM_PREFIX}.{publisher}.{subscriber}.{id}")
}

/// Payloads larger than one bus message are fetched in chunks from
/// `_L.<holder>.<receiver>.<id>`: the holder subscribes there and answers each chunk
/// request through `allow_responses`; only the receiver may publish there.
pub const LARGE_PREFIX: &str = "_L";

pub fn large_subject(holder: &str, receiver: &str, id: &str) -> String {
    format!("{LARGE_PREFIX}.{holder}.{receiver}.{id}")
}

/// The holder and receiver of a large-payload subject.
pub fn large_parties(subject: &str) -> Option<(&str, &str)> {
    let mut t = subject.splitn(4, '.');
    match (t.next(), t.next(), t.next(), t.next()) {
        (Some(LARGE_PREFIX), Some(h), Some(r), Some(id)) if !h.is_empty() && !r.is_empty() && !id.is_empty() => Some((h, r)),
        _ => None,
    }
}

/// The publisher and subscriber of a stream subject.
pub fn stream_parties(subject: &str) -> Option<(&str, &str)> {
    let mut t = subject.splitn(4, '.');
    match (t.next(), t.next(), t.next(), t.next()) {
        (Some(STREAM_PREFIX), Some(p), Some(s), Some(_)) => Some((p, s)),
        _ => None,
    }
}

/// The system requests every service answers, and who may send them.
pub const SYSTEM_CALLERS: &[(&str, &[Caller])] = &[
    // the runtime waits for storage and network before giving back what exited
    // containers held
    (<crate::system::ServicePing as crate::SystemRpc>::OP, &[Caller::Admin, Caller::Runtime]),
    (<crate::system::SystemInfoPart as crate::SystemRpc>::OP, &[Caller::Gateway]),
    (<crate::system::ServiceMetrics as crate::SystemRpc>::OP, &[Caller::Gateway]),
];

/// JetStream API subjects each user needs (the events stream: `berth up` creates it,
/// the gateway reads it for `docker events`).
pub fn jetstream_subjects(who: Caller) -> Vec<String> {
    let s = subject::EVENTS_STREAM;
    match who {
        Caller::Admin => vec![format!("$JS.API.STREAM.INFO.{s}"), format!("$JS.API.STREAM.CREATE.{s}")],
        Caller::Gateway => vec![
            format!("$JS.API.STREAM.INFO.{s}"),
            format!("$JS.API.CONSUMER.CREATE.{s}"),
            format!("$JS.API.CONSUMER.CREATE.{s}.>"),
            format!("$JS.API.CONSUMER.MSG.NEXT.{s}.>"),
            format!("$JS.API.CONSUMER.INFO.{s}.>"),
            format!("$JS.API.CONSUMER.DELETE.{s}.>"),
        ],
        _ => vec![],
    }
}

/// The services `who` exchanges stream frames with: those whose stream operations it
/// calls and those that call its stream operations.
pub fn stream_peers(who: Caller) -> Vec<Caller> {
    let mut v: Vec<Caller> = Vec::new();
    for op in all_calls().filter(|o| o.kind != Kind::Unary) {
        let callee = Caller::of(op.service);
        if op.callers.contains(&who) {
            v.push(callee);
        }
        if callee == who {
            v.extend(op.callers.iter().copied());
        }
    }
    v.sort();
    v.dedup();
    v
}

/// The users `who` exchanges requests and replies with (either way): the services
/// it calls and the callers of its own operations, system requests included. Any of
/// them may hold a payload too large for one message that `who` fetches.
pub fn bus_peers(who: Caller) -> Vec<Caller> {
    let mut v: Vec<Caller> = Vec::new();
    for op in all_calls() {
        let callee = Caller::of(op.service);
        if op.callers.contains(&who) {
            v.push(callee);
        }
        if callee == who {
            v.extend(op.callers.iter().copied());
        }
    }
    for (_, callers) in SYSTEM_CALLERS {
        if callers.contains(&who) {
            v.extend(Service::BACKENDS.into_iter().map(Caller::of));
        }
        if who.service().is_some_and(|s| Service::BACKENDS.contains(&s)) {
            v.extend(callers.iter().copied());
        }
    }
    v.sort();
    v.dedup();
    v
}

/// What `who` may do on the bus of `node`:
///
/// * publish: the subject of every operation whose callers include it, the system
///   requests it sends to every service, the events it owns
///   ([`crate::event::OWNERS`]), stream subjects towards its stream peers, and the
///   JetStream API it needs. Replies need no allow entry: `allow_responses` lets a
///   service answer exactly the requests it received, once.
///   Large payloads: chunk requests to what its bus peers hold for it
///   (`_L.<peer>.<who>.>`). Instance notices: a service announces its own start
///   (`berth.v1.instance.<node>.<svc>.started`), only admin (`berth up`) exits.
/// * subscribe: its own service's operations and system requests, its inbox, stream
///   subjects addressed to it, what it holds for others (`_L.<who>.>`), every
///   instance notice, and (gateway, admin) the events.
pub fn permissions(who: Caller, node: &str) -> Permissions {
    let mut p = Permissions::default();
    for op in all_calls() {
        if op.callers.contains(&who) {
            p.publish.push(op.subject(node));
        }
    }
    for (op, callers) in SYSTEM_CALLERS {
        if callers.contains(&who) {
            for svc in Service::BACKENDS {
                p.publish.push(subject::subject(svc, node, op));
            }
        }
    }
    for (typ, action, owner) in crate::event::OWNERS {
        if *owner == who {
            p.publish.push(subject::event_subject(typ.as_str(), action.as_str()));
        }
    }
    for peer in stream_peers(who) {
        p.publish.push(format!("{STREAM_PREFIX}.{}.{}.>", who.user(), peer.user()));
    }
    p.publish.extend(jetstream_subjects(who));
    for peer in bus_peers(who) {
        p.publish.push(format!("{LARGE_PREFIX}.{}.{}.>", peer.user(), who.user()));
    }
    match who.service() {
        Some(svc) => p.publish.push(subject::instance_subject(node, svc, subject::InstanceEvent::Started)),
        None => p.publish.push(format!("{}.instance.{node}.*.{}", subject::PREFIX, subject::InstanceEvent::Exited.token())),
    }

    if let Some(svc) = who.service() {
        if Service::BACKENDS.contains(&svc) {
            p.subscribe.push(svc.wildcard(node));
        }
    }
    p.subscribe.push(format!("{}.>", subject::inbox_prefix(who.user())));
    if !stream_peers(who).is_empty() {
        p.subscribe.push(format!("{STREAM_PREFIX}.*.{}.>", who.user()));
    }
    p.subscribe.push(format!("{LARGE_PREFIX}.{}.>", who.user()));
    p.subscribe.push(format!("{}.instance.>", subject::PREFIX));
    if matches!(who, Caller::Gateway | Caller::Admin) {
        p.subscribe.push(subject::EVENTS_WILDCARD.to_string());
    }
    p.publish.sort();
    p.publish.dedup();
    p
}

impl Permissions {
    /// This user's entry in nats-server's `authorization { users = [...] }`. Replies:
    /// `allow_responses` lets the user answer each request it received once, within
    /// [`MAX_REPLY_WAIT`]; it may publish to no other inbox.
    pub fn nats_user(&self, user: &str, password: &str) -> String {
        let q = |v: &[String]| v.iter().map(|s| format!("\"{s}\"")).collect::<Vec<_>>().join(", ");
        format!(
            "{{ user: \"{user}\", password: \"{password}\", permissions: {{ publish: {{ allow: [{}] }}, subscribe: {{ allow: [{}] }}, allow_responses: {{ max: 1, expires: \"{}s\" }} }} }}",
            q(&self.publish),
            q(&self.subscribe),
            MAX_REPLY_WAIT.as_secs()
        )
    }
}

/// nats-server's `authorization` block for `node`: every bus user with its
/// [`permissions`], its password from `password`.
pub fn nats_authorization(node: &str, mut password: impl FnMut(Caller) -> String) -> String {
    let mut users = String::new();
    for who in Caller::ALL {
        let pw = password(who);
        users.push_str("    ");
        users.push_str(&permissions(who, node).nats_user(who.user(), &pw));
        users.push('\n');
    }
    format!("authorization {{\n  users = [\n{users}  ]\n}}\n")
}

/// The call graph as a markdown table (docs/architecture.md holds a copy that a test
/// compares): for each service, each operation with its shape and callers.
pub fn call_graph_markdown() -> String {
    let mut out = String::new();
    out.push_str("| caller | calls |\n|---|---|\n");
    for who in Caller::ALL {
        let mut parts: Vec<String> = Vec::new();
        for svc in Service::BACKENDS {
            let ops: Vec<&str> = all_calls().filter(|o| o.service == svc && o.callers.contains(&who)).map(|o| o.name).collect();
            if !ops.is_empty() {
                parts.push(format!("**{svc}**: {}", ops.join(", ")));
            }
        }
        let system: Vec<&str> = SYSTEM_CALLERS.iter().filter(|(_, c)| c.contains(&who)).map(|(op, _)| *op).collect();
        if !system.is_empty() {
            parts.push(format!("every service: {}", system.join(", ")));
        }
        let text = if parts.is_empty() { "—".to_string() } else { parts.join("; ") };
        out.push_str(&format!("| {} | {text} |\n", who.user()));
    }
    out.push('\n');
    for svc in Service::BACKENDS {
        let ops: Vec<&Op> = all_calls().filter(|o| o.service == svc).collect();
        if ops.is_empty() {
            continue;
        }
        out.push_str(&format!("#### {svc}\n\n| operation | method | shape | callers |\n|---|---|---|---|\n"));
        for op in ops {
            let shape = match op.kind {
                Kind::Unary => "request/reply",
                Kind::Stream => "stream",
                Kind::Duplex => "duplex",
            };
            let callers: Vec<&str> = op.callers.iter().map(|c| c.user()).collect();
            out.push_str(&format!("| `{}` | `{}` | {shape} | {} |\n", op.name, op.method, callers.join(", ")));
        }
        out.push('\n');
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn snake(s: &str) -> String {
        let mut out = String::new();
        for (i, c) in s.chars().enumerate() {
            if c.is_ascii_uppercase() {
                if i > 0 {
                    out.push('_');
                }
                out.push(c.to_ascii_lowercase());
            } else {
                out.push(c);
            }
        }
        out
    }

    #[test]
    fn methods_are_the_operations_in_snake_case() {
        for op in all_calls() {
            assert_eq!(op.method, snake(op.name), "{}: name the method after the operation", op.name);
        }
    }

    #[test]
    fn every_operation_has_a_caller_and_no_service_calls_itself() {
        for op in all_calls() {
            assert!(!op.callers.is_empty(), "{} has no caller: remove it or name who calls it", op.name);
            assert!(!op.callers.contains(&Caller::of(op.service)), "{} calls itself over the bus", op.name);
            let mut c = op.callers.to_vec();
            c.dedup();
            assert_eq!(c.len(), op.callers.len(), "{}: callers listed twice", op.name);
        }
    }

    /// `idempotent` reaches the Rpc impl; an operation that reads the caller's input
    /// cannot be sent again (the input is gone).
    #[test]
    fn idempotent_marks() {
        assert!(<crate::network::NetworkList as crate::Rpc>::IDEMPOTENT);
        assert!(!<crate::network::NetworkCreate as crate::Rpc>::IDEMPOTENT);
        for op in all_calls() {
            assert!(!(op.idempotent && op.kind == Kind::Duplex), "{}: a duplex operation cannot be sent again", op.name);
        }
        assert!(all_calls().filter(|o| o.idempotent).count() >= 12);
    }

    #[test]
    fn operation_names_are_unique() {
        let mut names: Vec<(Service, &str)> = all_calls().map(|o| (o.service, o.name)).collect();
        let n = names.len();
        names.sort();
        names.dedup();
        assert_eq!(n, names.len());
    }

    /// docs/architecture.md shows the call graph generated from the tables;
    /// `BERTH_BLESS=1` rewrites it.
    #[test]
    fn architecture_doc_shows_the_tables() {
        let path = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../docs/architecture.md");
        let doc = std::fs::read_to_string(&path).unwrap();
        let (begin, end) = ("<!-- call graph: generated, do not edit -->\n", "<!-- end call graph -->");
        let a = doc.find(begin).expect("call graph start marker") + begin.len();
        let b = doc.find(end).expect("call graph end marker");
        let want = call_graph_markdown();
        if doc[a..b] != want {
            if std::env::var_os("BERTH_BLESS").is_some() {
                std::fs::write(&path, format!("{}{want}{}", &doc[..a], &doc[b..])).unwrap();
            } else {
                panic!("docs/architecture.md's call graph differs from the tables: run with BERTH_BLESS=1");
            }
        }
    }

    #[test]
    fn permissions_follow_the_tables() {
        let p = permissions(Caller::Images, "n1");
        assert!(p.publish.contains(&"berth.v1.storage.n1.LayerApply".to_string()));
        assert!(p.publish.contains(&"berth.v1.runtime.n1.ContainersUsingImage".to_string()));
        assert!(!p.publish.iter().any(|s| s.contains("ContainerKill") || s.starts_with("_I") || s.ends_with(".>") && s.starts_with("berth.v1.runtime")));
        assert!(p.subscribe.contains(&"berth.v1.images.n1.>".to_string()));
        assert!(p.subscribe.contains(&"_I.images.>".to_string()));
        let g = permissions(Caller::Gateway, "n1");
        assert!(g.publish.contains(&"berth.v1.runtime.n1.ContainerKill".to_string()));
        assert!(g.subscribe.contains(&subject::EVENTS_WILDCARD.to_string()));
        assert!(!g.publish.iter().any(|s| s.starts_with("berth.v1.events")));
        // instance notices: a service announces its own start, only admin exits
        assert!(p.publish.contains(&"berth.v1.instance.n1.images.started".to_string()));
        assert!(!p.publish.iter().any(|s| s.contains("exited") || s.contains("runtime.started")));
        assert!(p.subscribe.contains(&"berth.v1.instance.>".to_string()));
        let a = permissions(Caller::Admin, "n1");
        assert!(a.publish.contains(&"berth.v1.instance.n1.*.exited".to_string()));
        assert!(!a.publish.iter().any(|s| s.ends_with("started")));
        // large payloads: chunk requests only to what a peer holds for this user
        assert!(p.publish.contains(&"_L.storage.images.>".to_string()));
        assert!(p.publish.contains(&"_L.gateway.images.>".to_string()));
        assert!(!p.publish.iter().any(|s| s.starts_with("_L.") && !s.contains(".images.>")));
        assert!(p.subscribe.contains(&"_L.images.>".to_string()));
        let conf = nats_authorization("n1", |c| format!("pw-{}", c.user()));
        assert_eq!(conf.matches("user: ").count(), Caller::ALL.len());
        assert!(conf.contains("allow_responses: { max: 1, expires: \"7200s\" }"));
    }

    #[test]
    fn stream_subjects_name_their_parties() {
        let s = stream_subject("storage", "images", "abc");
        assert_eq!(s, "_S.storage.images.abc");
        assert_eq!(stream_parties(&s), Some(("storage", "images")));
        assert_eq!(stream_parties("_I.x.y"), None);
        let l = large_subject("runtime", "gateway", "abc");
        assert_eq!(large_parties(&l), Some(("runtime", "gateway")));
        assert_eq!(large_parties("_I.gateway.abc.d"), None);
        assert_eq!(large_parties("_L.runtime.gateway"), None);
    }
}
