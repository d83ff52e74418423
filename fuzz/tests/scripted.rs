//! Scripted sessions through the fuzz harness: ordinary flows must pass every
//! invariant the targets check (no false alarms), and reach deep states.

use wharf_core::Role;
use wharf_fuzz::knobs::Knobs;
use wharf_fuzz::peer::{FrameSpec, IdSel, Len, Meta, Name, PeerParams};
use wharf_fuzz::session::{Advance, Driver, SessionInput, Start, Step, TimeoutSel, Tx};

fn params() -> PeerParams {
    PeerParams {
        exact: false,
        min_version: 1,
        max_version: 1,
        max_frame_size: 8192,
        max_in_flight: 8,
        max_streams: 4,
        max_subscriptions: 8,
        window: 1024,
        keepalive_ms: 0,
        connection_id: 5,
        name: Name::Word(0),
        auth_len: 4,
    }
}

fn no_meta() -> Meta {
    arbitrary::Arbitrary::arbitrary(&mut arbitrary::Unstructured::new(&[0, 0, 0])).unwrap()
}

const POLL: Step = Step::Poll { max: 0, react: 0b0011_0101 };
const WRITE: Step = Step::Transmit(Tx::All);

fn inject(frame: FrameSpec) -> Step {
    Step::Inject { frame, split: 7 }
}

fn run(role: Role, steps: Vec<Step>) {
    let input = SessionInput { knobs: Knobs::roomy(), start: Start::Handshake(params()), wire: Vec::new(), steps };
    Driver::run_session(role, &input);
}

#[test]
fn server_session() {
    run(
        Role::Server,
        vec![
            WRITE,
            inject(FrameSpec::Request {
                id: IdSel::PeerNext,
                kind: 0,
                method: Name::Word(1),
                deadline_ms: Some(500),
                trace: true,
                meta: no_meta(),
                payload: Len(5),
            }),
            POLL,
            WRITE,
            // A bidi call from the client, data both ways.
            inject(FrameSpec::Request {
                id: IdSel::PeerNext,
                kind: 3,
                method: Name::Word(8),
                deadline_ms: None,
                trace: false,
                meta: no_meta(),
                payload: Len(0),
            }),
            inject(FrameSpec::Data { id: IdSel::PeerLast, payload: Len(100) }),
            Step::Poll { max: 0, react: 0b0010_0000 },
            Step::StreamSend { call: 1, payload: Len(10) },
            inject(FrameSpec::End(IdSel::PeerLast)),
            POLL,
            Step::Respond { call: 1, error: None, message: Name::Word(0), payload: Len(1) },
            // A call to the client, answered.
            Step::Request {
                method: Name::Word(1),
                kind: 0,
                payload: Len(3),
                timeout: TimeoutSel::Default,
                meta: no_meta(),
                trace: false,
            },
            WRITE,
            inject(FrameSpec::Response { id: IdSel::Ours(0), payload: Len(2) }),
            POLL,
            // Pub/sub.
            inject(FrameSpec::Subscribe { id: IdSel::PeerNext, topic: Name::Word(2), prefix: true, disconnect: false }),
            inject(FrameSpec::Publish { ack: Some(IdSel::PeerNext), topic: Name::Word(3), payload: Len(4) }),
            POLL,
            Step::Deliver { sub: 0, topic: Name::Word(3), payload: Len(4) },
            Step::DeliverLagged { sub: 0, dropped: 3 },
            inject(FrameSpec::Unsubscribe { id: IdSel::PeerNext, subscription: IdSel::PeerSub(0) }),
            POLL,
            // A call that times out on our side, a ping, then a graceful close.
            Step::Request {
                method: Name::Word(1),
                kind: 0,
                payload: Len(0),
                timeout: TimeoutSel::AfterMs(50),
                meta: no_meta(),
                trace: false,
            },
            Step::Ping,
            WRITE,
            inject(FrameSpec::Pong(0)),
            Step::Advance(Advance::PastNextTimer(1)),
            POLL,
            Step::Close { code: 0, message: Name::Word(0), reconnect_ms: Some(100) },
            WRITE,
            POLL,
            Step::Advance(Advance::Secs(10)),
            POLL,
        ],
    );
}

#[test]
fn client_session() {
    run(
        Role::Client,
        vec![
            Step::Request {
                method: Name::Word(1),
                kind: 1,
                payload: Len(3),
                timeout: TimeoutSel::Never,
                meta: no_meta(),
                trace: false,
            },
            Step::Subscribe { topic: Name::Word(2), prefix: true, disconnect: false },
            Step::Publish { topic: Name::Word(3), payload: Len(5), ack: true },
            WRITE,
            inject(FrameSpec::Data { id: IdSel::Ours(0), payload: Len(50) }),
            inject(FrameSpec::Ack { id: IdSel::Ours(1), status: 0, value: 0 }),
            inject(FrameSpec::Message { subscription: IdSel::OurSub(0), topic: Name::Word(3), payload: Len(2) }),
            inject(FrameSpec::Ack { id: IdSel::Ours(2), status: 0, value: 1 }),
            POLL,
            inject(FrameSpec::Response { id: IdSel::Ours(0), payload: Len(0) }),
            Step::Unsubscribe(0),
            WRITE,
            inject(FrameSpec::Ack { id: IdSel::Ours(3), status: 0, value: 0 }),
            inject(FrameSpec::Request {
                id: IdSel::PeerNext,
                kind: 0,
                method: Name::Word(1),
                deadline_ms: Some(10),
                trace: false,
                meta: no_meta(),
                payload: Len(1),
            }),
            Step::Poll { max: 0, react: 0 },
            Step::Advance(Advance::Ms(20)),
            POLL,
            inject(FrameSpec::Goodbye { code: 8, reconnect_after_ms: Some(5), message: Name::Word(0) }),
            POLL,
        ],
    );
}
