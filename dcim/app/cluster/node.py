"""One dcim node of a site's cluster: its lease, its shards, the leadership, the shared alarm state.

Keys, all under {prefix}/{site}/ in etcd:

    members/<node>     this node is alive: written with the node's lease, gone when the lease expires
    owners/<group>     the node that polls a shard; created only if absent (compare-and-create), with the lease
    leader             the site's leader, the same way; its create revision is the leader's fencing token
    alarms/<key>       the last state of an alarm as the shard's owner reported it (no lease: survives nodes)
    paged/<key>        what the leader has paged of that alarm ("firing", "acknowledged"), no lease either
    writes/<device>    the last control write's node and time: written in the transaction that fences it

Membership is the set of members/ keys, watched. Every node computes from it, by rendezvous hashing, which
shards it should own, releases those it should not (stops their devices, then deletes its owner key), and
claims the free ones it should (creates the owner key, then starts their devices). A node that dies stops
renewing its lease; etcd deletes its keys when the lease expires, the watches tell the others, and the
shard's next-ranked node claims it. So the failover bound is the lease TTL plus one reconcile and one poll.

Fencing. A node counts its lease as live only until the time it sent its last successful renewal plus the
TTL etcd granted: etcd itself cannot expire it sooner. Past that (dead engine, cut network, a long pause)
the node stops paging and writing at once, on its own clock, and keeps polling and buffering telemetry.
Every control write additionally runs a transaction that succeeds only while the node's owner key of the
device's shard is the one it created (its create revision): a node whose lease expired (its key deleted,
perhaps re-created by another node) is refused by etcd itself, whatever its clock says. Pages are recorded
the same way, in a transaction that succeeds only while the leader key is the one this node created.

Alarms. The rule engine runs where the shard is polled; its events (those it would page: firing, resolved
after a page, acknowledged) go to alarms/<key> in a transaction fenced by the shard's owner key. Only the
leader pages: it watches alarms/, and for each alarm compares with paged/<key>, which records what a hook
has taken. A firing alarm not recorded there is handed to the notifier; when every hook it was routed to
has taken the message (the notifier reports each delivery), the leader records paged/<key> (fenced by the
leader key). A resolve of a paged alarm is handed over the same way, and both keys are deleted once it is
delivered. Until then the page is pending in etcd: a leader that dies with it in its notifier's outbox (a
hook down) leaves it to the next leader, which sends it again; and a node that stops leading drops what its
notifier had not sent yet. So a page is delivered at least once across a leader's death, and twice only if
the leader dies between a hook's answer and the etcd record of it.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import time
from collections import deque
from collections.abc import Awaitable, Callable
from dataclasses import asdict, dataclass, field, replace
from typing import Any, Protocol

import aetcd
import structlog

from dcim.app.cluster.engine import EngineError, Etcd, bounded, transact, txn_revision
from dcim.app.cluster.shards import assign, device_groups, rack_groups
from dcim.app.cluster_config import ClusterConfig
from dcim.core.aio import reraise_lost_cancellation
from dcim.core.events import AlarmEvent, AlarmState, Severity
from dcim.core.metrics import REGISTRY
from dcim.core.samples import Batch
from dcim.core.topology import Hall

log = structlog.get_logger(__name__)

UP = REGISTRY.gauge("dcim_cluster_session_up", "1 while this node's etcd lease is live")
LEADER = REGISTRY.gauge("dcim_cluster_leader", "1 while this node is the site's leader")
NODES = REGISTRY.gauge("dcim_cluster_nodes", "Live nodes of the site as this node sees them")
SHARDS = REGISTRY.gauge("dcim_cluster_shards_owned", "Shards (device groups) this node owns")
LEASE_LEFT = REGISTRY.gauge("dcim_cluster_lease_remaining_seconds", "Time left on this node's lease, by its clock")
FENCED = REGISTRY.counter("dcim_cluster_fenced_total", "Control writes and pages refused by the fence", ("what",))
PAGES = REGISTRY.counter("dcim_cluster_pages_total", "Alarm events the leader handed to the notifier", ("state",))


# After a failed lease renewal, or any other failed etcd call of a session: how soon it is tried again.
RENEW_RETRY_S = 0.25
# A session outlives its lease's deadline (by this node's clock) by this many TTLs while etcd does not answer:
# an etcd leader election on a loaded host can take longer than a lease, and etcd extends every lease when a
# new leader takes over. Past the deadline the node is fenced (no writes, no pages) all the same; an answer
# that the lease is gone, or this grace running out, ends the session.
UNANSWERED_GRACE_TTLS = 2
OUTGOING_MAX = 10_000


class PageNotifier(Protocol):
    """What the leader needs of the daemon's notifier (dcim.rules.notify.Notifier)."""

    @property
    def active(self) -> bool: ...
    @property
    def sends_resolved(self) -> bool: ...
    def submit(self, event: AlarmEvent) -> None: ...
    def adopt(self, event: AlarmEvent) -> None: ...
    def forget(self) -> None: ...
    def track_deliveries(self, callback: Callable[[list[AlarmEvent]], None]) -> None: ...


async def wait_event(event: asyncio.Event, seconds: float) -> bool:
    """Whether `event` was set within `seconds`. asyncio.timeout, not asyncio.wait_for: on Python 3.11 the
    latter drops a cancellation that lands as the event is set (gh-86296), and the session's task group then
    waits for a task that runs on."""
    try:
        async with asyncio.timeout(seconds):
            await event.wait()
    except TimeoutError:
        return False
    return True


class SessionLost(Exception):
    """The lease can no longer be counted on: expired, or not renewed within its TTL."""


class NotLeader(Exception):
    """The leader key is no longer this node's."""


class NotLive(EngineError):
    """The lease is past its deadline by this node's clock (etcd has not answered a renewal): no pages until
    it does. Handled as an etcd call that failed: tried again soon, the session ended if it lasts."""


@dataclass(slots=True)
class Held:
    """A key held with a lease: its value, lease and create revision."""

    value: str
    lease: int
    revision: int


@dataclass
class View:
    """What this node knows of the site's keys, as of `revision` (one get, then the watch)."""

    revision: int = 0
    members: dict[str, Held] = field(default_factory=dict)
    owners: dict[str, Held] = field(default_factory=dict)
    leader: Held | None = None
    alarms: dict[str, dict[str, Any]] = field(default_factory=dict)
    paged: dict[str, str] = field(default_factory=dict)


def event_to_json(event: AlarmEvent) -> bytes:
    return json.dumps(asdict(event), separators=(",", ":")).encode()


def event_from_dict(data: dict[str, Any]) -> AlarmEvent:
    fields = dict(data)
    fields["state"] = AlarmState(fields["state"])
    fields["severity"] = Severity(fields["severity"])
    fields["labels"] = dict(fields.get("labels") or {})
    return AlarmEvent(**fields)


class AlarmOutlet:
    """What the rule engine's notifier sees on every node: events queued for alarms/ in etcd."""

    def __init__(self, node: ClusterNode) -> None:
        self._node = node

    def submit(self, event: AlarmEvent) -> None:
        self._node.outgoing.append(event)
        self._node.outgoing_ready.set()


class _OwnAlarms:
    def __init__(self, node: ClusterNode, outlet: Any) -> None:
        self._node = node
        self._outlet = outlet

    def alarm_changed(self, event: AlarmEvent) -> None:
        if self._node.owns(event.subject) or event.subject not in self._node.group_of:
            self._outlet.alarm_changed(event)


class ClusterNode:
    def __init__(self, config: ClusterConfig, hall: Hall, *, apply: Callable[[set[str]], Awaitable[None]],
                 notifier: PageNotifier | None, clock: Callable[[], float] = time.monotonic,
                 overlap: float = 2.0) -> None:
        """`apply(devices)`: make the daemon poll exactly these devices (its SIGHUP machinery);
        `notifier`: the daemon's notifier (its `submit`), used only while this node leads; `overlap`: how long
        a shard given up to its rendezvous owner is still polled here once that node holds it."""
        self.config = config
        self.node = config.node_name(hall.state_dir)
        self.site = hall.site.id
        self.root = f"{config.prefix}/{self.site}/"
        self.apply = apply
        self.notifier = notifier
        self.clock = clock
        self.ttl = config.ttl_seconds()
        self.etcd = Etcd(config.endpoints, timeout=max(1.0, self.ttl / 3), credentials=config.credentials())
        # Set by the watch on every change: one event per consumer, each clears its own.
        self.shards_changed = asyncio.Event()
        self.leader_changed = asyncio.Event()
        self.set_topology(hall)
        self.view = View()
        self.loaded = 0  # the revision of the last full read of the site's keys
        self.lease_id = 0
        self.deadline = 0.0  # monotonic: the lease is counted on until then
        self.connected = False
        self.claims: dict[str, int] = {}  # group -> create revision of our owner key
        self.polling: set[str] = set()  # groups whose devices run here (kept while cut off)
        # Groups given up to the node rendezvous hashing names (one that joined or came back), still polled
        # here until that node has held them for `overlap` seconds, so its first polls land before our last
        # (make before break, as at a clean stop): group -> (when released, when another owner was first seen).
        self.overlap = overlap
        self.lingering: dict[str, tuple[float, float | None]] = {}
        self._fenced_logged = False  # said once a session that its lease's deadline passed unanswered
        self._unanswered_logged = 0.0  # when a failed etcd call was last logged (at most once a TTL)
        self._apply_lock = asyncio.Lock()
        self.leader_revision = 0
        self.leading = False
        self.known: set[str] = set()  # alarms this leadership paged or adopted from an earlier leader
        # Alarm key -> what this leadership handed to the notifier and no hook has taken yet ("firing",
        # "acknowledged", "resolved"); and the events hooks took, for the leader loop to record in etcd.
        self.handed: dict[str, str] = {}
        self.delivered: deque[AlarmEvent] = deque()
        if notifier is not None:
            notifier.track_deliveries(self._delivered)
        # Bounded: a node cut off from etcd for long keeps the latest alarm changes, not all of them (the
        # shard's owner re-evaluates its alarms anyway once the node is back).
        self.outgoing: deque[AlarmEvent] = deque(maxlen=OUTGOING_MAX)
        self.outgoing_ready = asyncio.Event()
        self.reconciled = asyncio.Event()
        self.sessions = 0
        self.renewals = 0  # of the current session's lease
        self.alarm_outlet = AlarmOutlet(self)
        REGISTRY.add_collector(self._collect)

    def set_topology(self, hall: Hall) -> None:
        """The groups of the configuration (again after a SIGHUP reload)."""
        enabled = {d.id for d in hall.devices if getattr(d, "enabled", True)}
        self.groups = {g: [d for d in ds if d in enabled] for g, ds in device_groups(hall).items()}
        self.groups = {g: ds for g, ds in self.groups.items() if ds}
        self.group_of = {d: g for g, ds in self.groups.items() for d in ds}
        self.group_of.update(rack_groups(hall, self.groups))
        self.shards_changed.set()

    # ---- what the daemon asks -----------------------------------------------------------------------

    def live(self) -> bool:
        """The lease is live by this node's own clock: it may page and write."""
        return self.connected and self.clock() < self.deadline

    def owns(self, source: str) -> bool:
        group = self.group_of.get(source)
        return group is not None and group in self.polling

    def shard_hall(self, config: Any) -> Any:
        """`config` (the site's) with only the devices and racks of the shards this node polls: what its rule
        engine judges. The others' rules are judged where their shards are polled; judging them here too cost
        every node the whole site's rule tick."""
        racks = {r for r, g in self.group_of.items() if g in self.polling}
        rooms = [room.model_copy(update={"rows": [
            row.model_copy(update={"racks": [rack for rack in row.racks if rack.id in racks]}) for row in room.rows
        ]}) for room in config.rooms]
        return config.model_copy(update={"devices": [d for d in config.devices if self.owns(d.id)], "rooms": rooms})

    def filter_publish(self, publish: Callable[[Batch], None]) -> Callable[[Batch], None]:
        """The rule engine's batches (rack metrics, alarm changes) of subjects this node polls only. The engine
        judges this node's shards only (`shard_hall`), but it is rebuilt after the shards change: in between,
        a device that moved away must not raise its no-data alarm here."""
        def only_own(batch: Batch) -> None:
            if self.owns(batch.device) or batch.device not in self.group_of:
                publish(batch)
        return only_own

    def filter_outlet(self, outlet: Any) -> Any:
        """The retained MQTT alarm topics, the same way: only alarms of this node's shards."""
        return _OwnAlarms(self, outlet)

    async def fence_write(self, device: str) -> str | None:
        """None when this node may write to `device` now; otherwise why not (the write is refused)."""
        reason = await self._fence_write(device)
        if reason is not None:
            FENCED.inc(what="write")
        return reason

    async def _fence_write(self, device: str) -> str | None:
        if not self.live():
            return "this node's cluster lease is not live (cut off from etcd?): no control writes"
        group = self.group_of.get(device)
        revision = self.claims.get(group) if group is not None else None
        if group is None or revision is None:
            return f"{device} is in shard {group or '?'}, which this node does not own"
        key = self._key("owners", group)
        record = json.dumps({"node": self.node, "ts": time.time()}).encode()

        async def txn(c: aetcd.Client) -> tuple[bool, list[Any]]:
            t = c.transactions
            result = await transact(
                c, compare=[t.create(key) == revision], success=[t.put(self._key("writes", device), record)])
            return result

        try:
            ok, _ = await self.etcd.call(txn)
        except EngineError as err:
            return f"cannot confirm the shard's ownership with etcd: {err}"
        if not ok:
            return f"shard {group} is no longer this node's (its lease expired or it moved)"
        if not self.live():
            return "this node's cluster lease is not live: no control writes"
        return None

    def status(self) -> dict[str, Any]:
        now = self.clock()
        owners = {g: h.value for g, h in sorted(self.view.owners.items())}
        wanted = assign(self.groups, self.view.members)
        return {
            "node": self.node,
            "site": self.site,
            "endpoint": self.etcd.endpoint,
            "live": self.live(),
            "leader": self.view.leader.value if self.view.leader is not None else None,
            "leading": self.leading and self.live(),
            "lease_id": self.lease_id,
            "lease_remaining_s": round(max(0.0, self.deadline - now), 2) if self.connected else 0.0,
            "lease_ttl_s": self.ttl,
            "renewals": self.renewals,
            "sessions": self.sessions,
            "nodes": sorted(self.view.members),
            "shards": {g: {"owner": owners.get(g), "assigned": wanted.get(g), "devices": ds}
                       for g, ds in sorted(self.groups.items())},
            "polling": sorted(self.polling),
            # Given up to the node rendezvous names, still polled here for the hand-over overlap.
            "lingering": sorted(self.lingering),
            "alarms_shared": len(self.view.alarms),
            "pages_pending": sorted(self.handed) if self.leading else [],
        }

    def _collect(self) -> None:
        UP.set(1 if self.live() else 0)
        LEADER.set(1 if self.leading and self.live() else 0)
        NODES.set(len(self.view.members))
        SHARDS.set(len(self.claims))
        LEASE_LEFT.set(max(0.0, self.deadline - self.clock()) if self.connected else 0.0)

    # ---- the session loop ---------------------------------------------------------------------------

    def _changed(self) -> None:
        self.shards_changed.set()
        self.leader_changed.set()

    def _key(self, kind: str, name: str = "") -> bytes:
        return f"{self.root}{kind}/{name}".encode() if name else f"{self.root}{kind}".encode()

    async def run(self) -> None:
        """Sessions until cancelled: a lost session (lease expired, engine unreachable) starts a new one."""
        blind = asyncio.get_running_loop().create_task(self._poll_all_while_cut_off_at_start(),
                                                       name="cluster:cut-off-at-start")
        try:
            while True:
                try:
                    await self._session()
                except* (SessionLost, EngineError) as group:
                    log.warning("cluster: session lost; notifications and control writes stop, polling goes on",
                                node=self.node, reason="; ".join(str(e) for e in group.exceptions))
                self._lost()
                await asyncio.sleep(min(1.0, self.ttl / 5))
        finally:
            blind.cancel()
            self._lost()
            await self._leave()

    async def _poll_all_while_cut_off_at_start(self) -> None:
        """A node that cannot reach etcd when it starts does not know its shards: rather than watch nothing,
        after two lease TTLs without a session it polls every device of the site (its control writes and pages
        stay off: they need the lease). The first session's shards then replace them (`_reconcile`)."""
        await asyncio.sleep(2 * self.ttl)
        if self.sessions == 0:
            log.warning("cluster: etcd unreachable since start; polling every device of the site until it "
                        "answers (control writes and notifications stay off)", node=self.node,
                        devices=sum(len(ds) for ds in self.groups.values()))
            self.polling = set(self.groups)
            await self._apply()

    async def handed_over(self, groups: set[str], timeout: float) -> bool:  # noqa: ASYNC109 - a shutdown budget
        """After a clean stop of `run` (the lease given back): whether, within `timeout`, another node came to own
        each of `groups` (the shards this node polled). The daemon polls them meanwhile, so a rolling restart
        leaves no gap in their polls (a poll or two is made by both nodes; this node's writes and pages ended
        with its lease)."""
        prefix = self._key("owners").decode() + "/"
        deadline = self.clock() + timeout
        try:
            while groups:
                with contextlib.suppress(EngineError):
                    result = await self.etcd.call(lambda c: c.get_prefix(prefix.encode()))
                    owners = {kv.key.decode()[len(prefix):]: kv.value.decode(errors="replace") for kv in result}
                    groups = {g for g in groups if owners.get(g) in (None, self.node)}
                if not groups or self.clock() >= deadline:
                    break
                await asyncio.sleep(0.1)
        finally:
            with contextlib.suppress(Exception):
                await asyncio.shield(self.etcd.close())
        if groups:
            log.warning("cluster: stopping before another node took these shards", shards=sorted(groups))
        else:
            log.info("cluster: shards handed over", seconds=round(timeout - (deadline - self.clock()), 2))
        return not groups

    def _lost(self) -> None:
        self.connected = False
        self._stop_leading()
        self.claims.clear()
        self.reconciled.clear()

    async def _leave(self) -> None:
        """On a clean stop: give the lease back, so the others take over at once rather than after the TTL."""
        if self.lease_id:
            lease = self.lease_id
            with contextlib.suppress(Exception):
                await asyncio.shield(self.etcd.call(lambda c: c.revoke_lease(lease)))
        with contextlib.suppress(Exception):
            await asyncio.shield(self.etcd.close())

    async def _session(self) -> None:
        old = self.lease_id
        sent = self.clock()
        lease = await self.etcd.call(lambda c: c.lease(self.ttl))
        self.lease_id, self.deadline = int(lease.id), sent + int(lease.ttl)
        self.renewals = 0
        self._fenced_logged = False
        self._unanswered_logged = 0.0
        if old:
            # A lease of an earlier session may still hold keys (a pause shorter than its TTL): give it up.
            with contextlib.suppress(EngineError):
                await self.etcd.call(lambda c: c.revoke_lease(old))
        info = json.dumps({"node": self.node, "since": time.time(), "lease": self.lease_id}).encode()
        await self.etcd.call(lambda c: c.put(self._key("members", self.node), info, lease=self.lease_id))
        await self._load()
        self.connected = True
        self.sessions += 1
        log.info("cluster: joined", node=self.node, site=self.site, lease=self.lease_id, ttl=self.ttl,
                 endpoint=self.etcd.endpoint, nodes=sorted(self.view.members))
        self._changed()
        async with asyncio.TaskGroup() as tg:
            tg.create_task(self._keepalive(), name="cluster:keepalive")
            tg.create_task(self._watch(), name="cluster:watch")
            tg.create_task(self._reconcile_loop(), name="cluster:shards")
            tg.create_task(self._leader_loop(), name="cluster:leader")
            tg.create_task(self._send_alarms(), name="cluster:alarms")

    async def _keepalive(self) -> None:
        # Four renewals per TTL: an etcd leader election (about a second, during which no member answers, more
        # on a loaded host) or a member's death costs one or two of them, not the lease. A failed renewal is
        # tried again soon on the next endpoint, one endpoint per try: a sweep of every endpoint with a
        # timeout each could outlast the lease alone.
        pause = self.ttl / 4
        while True:
            reraise_lost_cancellation()
            await asyncio.sleep(pause)
            sent = self.clock()
            try:
                reply = await self.etcd.call(lambda c: c.refresh_lease(self.lease_id), tries=1)
            except EngineError as err:
                self._unanswered("lease renewal", err)
                pause = min(self.ttl / 4, RENEW_RETRY_S)
                continue
            pause = self.ttl / 4
            if reply is None or int(reply.TTL) <= 0:
                raise SessionLost("etcd says the lease expired")
            self.deadline = sent + int(reply.TTL)
            self.renewals += 1

    async def _load(self) -> None:
        result = await self.etcd.call(lambda c: c.get_prefix(self.root.encode()))
        view = View(revision=int(result.header.revision))
        for kv in result:
            self._apply_kv(view, kv.key.decode(), kv.value, int(kv.lease), int(kv.create_revision), put=True)
        self.view = view
        self.loaded = view.revision

    def _apply_kv(self, view: View, key: str, value: bytes, lease: int, created: int, *, put: bool) -> None:
        kind, _, name = key[len(self.root):].partition("/")
        text = value.decode(errors="replace")
        if kind == "members":
            if put:
                view.members[name] = Held(text, lease, created)
            else:
                view.members.pop(name, None)
        elif kind == "owners":
            if put:
                view.owners[name] = Held(text, lease, created)
            else:
                view.owners.pop(name, None)
        elif kind == "leader":
            view.leader = Held(text, lease, created) if put else None
        elif kind == "alarms":
            if put:
                with contextlib.suppress(ValueError):
                    view.alarms[name] = json.loads(text)
            else:
                view.alarms.pop(name, None)
        elif kind == "paged":
            if put:
                view.paged[name] = text
            else:
                view.paged.pop(name, None)

    async def _watch(self) -> None:
        mine = self._key("members", self.node)
        while True:
            reraise_lost_cancellation()
            client: aetcd.Client | None = None
            try:
                client = await self.etcd.client()
                watch = await bounded(
                    client.watch_prefix(self.root.encode(), start_revision=self.view.revision + 1),
                    self.etcd.timeout)
                # Ends with an error, or quietly when the client is closed (Etcd.move gave it up).
                async for event in watch:
                    kv = event.kv
                    if int(kv.mod_revision) <= self.loaded:
                        # Already in the view: the last full read was at that revision or later. (Not
                        # view.revision: one revision can change several keys, a lease's expiry all of them.)
                        continue
                    self._apply_kv(self.view, kv.key.decode(), kv.value, int(kv.lease),
                                   int(kv.create_revision), put=event.kind == "PUT")
                    self.view.revision = max(self.view.revision, int(kv.mod_revision))
                    self._changed()
                    if kv.key == mine and event.kind != "PUT":
                        # Our lease expired (a pause, a cut longer than the TTL) or was revoked: everything
                        # it held is gone. Said at once, without waiting for the next renewal's answer.
                        raise SessionLost("etcd deleted this node's member key: its lease is gone")
            except aetcd.exceptions.RevisionCompactedError:
                await self._load()
                self._changed()
                continue
            except (TimeoutError, aetcd.ClientError, OSError) as err:
                log.info("cluster: watch ended; watching again", error=str(err) or type(err).__name__)
                await self.etcd.move(client)
            except asyncio.CancelledError:
                task = asyncio.current_task()
                if task is None or task.cancelling():
                    raise
                # Cancelled from the inside (grpc closes the calls of a channel given up for the next
                # endpoint): not a stop. Ending here would end the watch without a word (a task group does
                # not notice a child that ends cancelled).
                log.info("cluster: watch ended; watching again", error="cancelled: its client was closed")
                await self.etcd.move(client)
            if self.clock() >= self._given_up_at():
                raise SessionLost("watch lost and lease not renewed")
            await asyncio.sleep(0.1)

    def _given_up_at(self) -> float:
        return self.deadline + UNANSWERED_GRACE_TTLS * self.ttl

    def _unanswered(self, what: str, err: BaseException) -> None:
        """An etcd call of this session failed (a member down, a leader election under way): the caller tries
        again soon. SessionLost once etcd has not answered for the lease and the grace after it."""
        now = self.clock()
        if now >= self._given_up_at():
            raise SessionLost(f"etcd did not answer within the lease and {UNANSWERED_GRACE_TTLS} TTLs more "
                              f"({what}: {err})")
        if now >= self.deadline and not self._fenced_logged:
            self._fenced_logged = True
            log.warning("cluster: lease not renewed within its TTL; control writes and notifications fenced "
                        "until etcd answers", what=what, error=str(err))
        elif now - self._unanswered_logged >= self.ttl:
            self._unanswered_logged = now
            log.warning("cluster: etcd call failed; retrying", what=what, error=str(err),
                        left=round(self.deadline - now, 2))

    # ---- shards -------------------------------------------------------------------------------------

    async def _reconcile_loop(self) -> None:
        while True:
            reraise_lost_cancellation()
            # Woken by the watch; at least once a TTL anyway, so a failed claim is retried.
            if not await wait_event(self.shards_changed, self.ttl):
                # A quiet TTL: read the site's keys again. A watch stream can stall without an error (a
                # proxy, a half-open connection); this bounds what the view can miss to one TTL.
                try:
                    await self._load()
                except EngineError as err:
                    self._unanswered("read of the site", err)
                    await asyncio.sleep(RENEW_RETRY_S)
                    continue
                self._changed()
            self.shards_changed.clear()
            try:
                await self._reconcile()
            except EngineError as err:
                self._unanswered("shard claims", err)
                await asyncio.sleep(RENEW_RETRY_S)
                self.shards_changed.set()
                continue
            self.reconciled.set()

    async def _reconcile(self) -> None:
        view = self.view
        live = set(view.members)
        desired = {g for g, n in assign(self.groups, live).items() if n == self.node} if self.node in live else set()
        for group, revision in list(self.claims.items()):
            held = view.owners.get(group)
            if (held is not None and held.lease != self.lease_id) or (held is None and view.revision > revision):
                # Deleted or taken by another lease behind our back: not ours any more.
                del self.claims[group]
        release = set(self.claims) - desired
        if release:
            self.polling -= release
            now = self.clock()
            for group in release:
                self.lingering[group] = (now, None)
            for group in sorted(release):
                revision = self.claims.pop(group)
                key = self._key("owners", group)

                async def give_up(c: aetcd.Client, key: bytes = key, revision: int = revision) -> Any:
                    t = c.transactions
                    return await transact(c, compare=[t.create(key) == revision], success=[t.delete(key)])

                await self.etcd.call(give_up)
            log.info("cluster: shards released", node=self.node, shards=sorted(release))
        claimed = []
        for group in sorted(desired - set(self.claims)):
            if group in view.owners:
                continue  # held by another node (or an old lease of ours): its deletion wakes us
            ok, responses = await self._create_with_lease(self._key("owners", group))
            if ok:
                self.claims[group] = txn_revision(responses)
                claimed.append(group)
        if claimed:
            log.info("cluster: shards claimed", node=self.node, shards=claimed,
                     devices=sum(len(self.groups[g]) for g in claimed))
        lingered = self._linger(view)
        # What runs here now: exactly the shards this node holds (devices kept while cut off go, if others
        # hold their shards now), and those it gave up a moment ago.
        if self.polling != set(self.claims) or lingered or release:
            self.polling = set(self.claims)
            await self._apply()

    def _linger(self, view: View) -> bool:
        """Drop from `lingering` the groups their new owner has held for `overlap` seconds (or that nobody
        took within the lease TTL and a little more, or that are ours again); True when any went. Wakes the
        reconcile loop when the next one is due."""
        now = self.clock()
        gone = False
        due: list[float] = []
        for group, (released, seen) in list(self.lingering.items()):
            owner = view.owners.get(group)
            if seen is None and owner is not None and owner.lease != self.lease_id:
                seen = now
                self.lingering[group] = (released, seen)
            ends = seen + self.overlap if seen is not None else released + self.ttl + 2 + self.overlap
            if group in self.claims or now >= ends:
                del self.lingering[group]
                gone = True
            else:
                due.append(ends)
        if due:
            asyncio.get_running_loop().call_later(max(0.0, min(due) - now) + 0.01, self.shards_changed.set)
        return gone

    async def _create_with_lease(self, key: bytes) -> tuple[bool, list[Any]]:
        """Create `key` (this node's name, bound to its lease) only if it does not exist: how a shard is claimed
        and the leadership taken. (ok, responses): ok False when another holds it."""
        async def create(c: aetcd.Client) -> tuple[bool, list[Any]]:
            t = c.transactions
            return await transact(c, compare=[t.create(key) == 0],
                                  success=[t.put(key, self.node.encode(), self.lease_id)])

        return await self.etcd.call(create)

    async def _apply(self) -> None:
        devices = {d for g in self.polling | set(self.lingering) for d in self.groups.get(g, ())}
        # Shielded: a session lost mid-way must not leave devices half started; locked: the next session's
        # first apply waits for it.
        await asyncio.shield(self._apply_locked(devices))

    async def _apply_locked(self, devices: set[str]) -> None:
        async with self._apply_lock:
            await self.apply(devices)

    # ---- leader -------------------------------------------------------------------------------------

    async def _leader_loop(self) -> None:
        key = self._key("leader")
        while True:
            reraise_lost_cancellation()
            held = self.view.leader
            # Ours still (an etcd call of our leadership failed, the key is there): lead on, elected as before.
            ours = (held is not None and self.leader_revision > 0 and held.lease == self.lease_id
                    and held.revision == self.leader_revision)
            try:
                if held is None:
                    ok, responses = await self._create_with_lease(key)
                    if ok:
                        self.leader_revision = txn_revision(responses)
                        ours = True
                if ours:
                    try:
                        await self._lead()
                    except NotLeader:
                        log.warning("cluster: leadership lost", node=self.node)
                    finally:
                        self._stop_leading()
            except EngineError as err:
                self._unanswered("leadership", err)
                await asyncio.sleep(RENEW_RETRY_S)
                continue
            await wait_event(self.leader_changed, self.ttl)
            self.leader_changed.clear()

    def _stop_leading(self) -> None:
        if self.leading and self.notifier is not None:
            # What our notifier still holds for the hooks is not sent: the next leader sends it from etcd.
            self.notifier.forget()
        self.leading = False

    async def _lead(self) -> None:
        # Everything etcd held when we were elected is in the view once the watch has passed our own put.
        while self.view.revision < self.leader_revision:
            await wait_event(self.leader_changed, self.ttl)
            self.leader_changed.clear()
        self.leading = True
        self.known = set()
        self.handed = {}
        self.delivered.clear()
        if self.notifier is not None:
            # What this node's notifier remembers from an earlier leadership is stale: etcd's record rules.
            self.notifier.forget()
        log.info("cluster: leading the site", node=self.node, token=self.leader_revision,
                 alarms=len(self.view.alarms), paged=len(self.view.paged))
        while True:
            reraise_lost_cancellation()
            held = self.view.leader
            if held is None or held.lease != self.lease_id or held.revision != self.leader_revision:
                raise NotLeader
            self.leader_changed.clear()
            while self.delivered:
                await self._record_delivery(self.delivered[0])
                self.delivered.popleft()
            await self._page()
            await wait_event(self.leader_changed, self.ttl)

    async def _page(self) -> None:
        """Hand to the notifier what etcd says is not paged yet (nor waiting in our notifier)."""
        for key, data in sorted(self.view.alarms.items()):
            state = data.get("state")
            paged = self.view.paged.get(key)
            pending = self.handed.get(key)
            if state == AlarmState.FIRING and not data.get("suppressed"):
                mark = "acknowledged" if data.get("acknowledged") else "firing"
                if paged == mark or (paged == "acknowledged" and mark == "firing"):
                    if key not in self.known:
                        # Paged by an earlier leader: our notifier must know it, to page its resolve.
                        self.known.add(key)
                        if self.notifier is not None:
                            self.notifier.adopt(event_from_dict(data))
                    continue
                if pending == mark or (pending == "acknowledged" and mark == "firing"):
                    continue  # in our notifier, waiting for its hook
                if paged == "firing" and mark == "acknowledged":
                    # The acknowledgement of a paged alarm sends no message (it stops the reminders): it is
                    # recorded at once, and the notifier told (as an adopted alarm, if an earlier leader paged).
                    await self._fenced([("put", "paged", key, mark)])
                    self.view.paged[key] = mark
                    if self.notifier is not None:
                        if key in self.known:
                            self.notifier.submit(event_from_dict(data))
                        else:
                            self.notifier.adopt(event_from_dict(data))
                    self.known.add(key)
                    self.handed.pop(key, None)
                    continue
                self.known.add(key)
                self.handed[key] = mark
                self._hand_over(data)
            elif state == AlarmState.RESOLVED and pending != "resolved":
                if (paged is None and pending is None) or not self._resolves_sent():
                    # Never delivered firing (or no resolves sent): nothing to tell anyone, forget it.
                    await self._fenced([("delete", "alarms", key, ""), ("delete", "paged", key, "")])
                    self.view.alarms.pop(key, None)
                    self.view.paged.pop(key, None)
                    self.handed.pop(key, None)
                    if key in self.known and self.notifier is not None:
                        self.notifier.submit(event_from_dict(data))  # our notifier's groups stay right
                    self.known.discard(key)
                    continue
                if key not in self.known and self.notifier is not None:
                    # Paged by an earlier leader and resolved before this one saw it firing: the notifier
                    # sends a resolve only of an alarm it knows was paged.
                    self.notifier.adopt(replace(event_from_dict(data), state=AlarmState.FIRING))
                self.known.discard(key)
                self.handed[key] = "resolved"
                self._hand_over(data)

    def _resolves_sent(self) -> bool:
        return self.notifier is None or self.notifier.sends_resolved

    async def _record_delivery(self, event: AlarmEvent) -> None:
        """A hook took `event`: etcd records it as paged (a resolve: the alarm's keys go)."""
        key = event.key
        pending = self.handed.get(key)
        if pending is None:
            return  # not handed over by this leadership
        if event.state is AlarmState.RESOLVED:
            if pending != "resolved":
                return
            await self._fenced([("delete", "alarms", key, ""), ("delete", "paged", key, "")])
            self.view.alarms.pop(key, None)
            self.view.paged.pop(key, None)
            del self.handed[key]
        elif event.state is AlarmState.FIRING:
            mark = "acknowledged" if event.acknowledged else "firing"
            if self.view.paged.get(key) != "acknowledged":
                await self._fenced([("put", "paged", key, mark)])
                self.view.paged[key] = mark
            if pending == mark or (pending == "firing" and mark == "acknowledged"):
                del self.handed[key]
        else:
            return
        log.info("cluster: page delivered", alarm=key, state=str(event.state), node=self.node)

    def _delivered(self, events: list[AlarmEvent]) -> None:
        """From the notifier: hooks took these (called in its delivery task; recorded by the leader loop)."""
        if self.leading:
            self.delivered.extend(events)
            self.leader_changed.set()

    def _hand_over(self, data: dict[str, Any]) -> None:
        if not self.live():
            FENCED.inc(what="page")
            raise NotLive("lease not live: no pages")
        event = event_from_dict(data)
        PAGES.inc(state=str(event.state))
        log.info("cluster: paging", alarm=event.key, state=str(event.state), node=self.node)
        if self.notifier is not None and self.notifier.active:
            self.notifier.submit(event)
        else:
            self._delivered([event])  # nobody to tell: as good as delivered

    async def _fenced(self, ops: list[tuple[str, str, str, str]]) -> None:
        """Apply `ops` only while the leader key is still the one we created; NotLeader otherwise."""
        if not self.live():
            FENCED.inc(what="page")
            raise NotLive("lease not live: no pages")
        leader = self._key("leader")
        revision = self.leader_revision

        async def txn(c: aetcd.Client) -> tuple[bool, list[Any]]:
            t = c.transactions
            success = [t.put(self._key(kind, name), value.encode()) if op == "put" else t.delete(self._key(kind, name))
                       for op, kind, name, value in ops]
            result = await transact(c, [t.create(leader) == revision], success)
            return result

        ok, _ = await self.etcd.call(txn)
        if not ok:
            FENCED.inc(what="page")
            raise NotLeader

    # ---- alarm events from this node's rule engine -----------------------------------------------------

    async def _send_alarms(self) -> None:
        await self.reconciled.wait()
        while True:
            reraise_lost_cancellation()
            await self.outgoing_ready.wait()
            self.outgoing_ready.clear()
            while self.outgoing:
                event = self.outgoing[0]
                try:
                    await self._share(event)
                except EngineError as err:
                    self._unanswered("alarm sharing", err)
                    await asyncio.sleep(RENEW_RETRY_S)
                    continue  # the same event again
                self.outgoing.popleft()

    async def _share(self, event: AlarmEvent) -> None:
        group = self.group_of.get(event.subject)
        if group is not None:
            revision = self.claims.get(group)
            fence = self._key("owners", group)
        else:
            # A subject of no shard (a site-wide rule): the leader reports it.
            revision = self.leader_revision if self.leading else None
            fence = self._key("leader")
        if revision is None:
            log.info("cluster: alarm event of a shard not owned here dropped", alarm=event.key, shard=group)
            return
        key = self._key("alarms", event.key)
        data = event_to_json(event)

        async def txn(c: aetcd.Client) -> tuple[bool, list[Any]]:
            t = c.transactions
            result = await transact(c, [t.create(fence) == revision], [t.put(key, data)])
            return result

        ok, _ = await self.etcd.call(txn)
        if ok:
            log.info("cluster: alarm shared", alarm=event.key, state=str(event.state), shard=group)
        else:
            log.info("cluster: alarm event not shared: its shard moved", alarm=event.key, shard=group)

