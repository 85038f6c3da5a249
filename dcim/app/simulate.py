"""`dcim simulate`: serve every simulated device of a configuration from the plant model.

Each protocol's simulator (named in the protocol registry, `dcim.drivers.registry`; `serve(plant, devices, *,
profile_dirs, ready)`) serves its devices on their configured addresses and says when its sockets are bound;
one ticker advances the plant. An optional HTTP control endpoint injects faults:

    curl -X POST localhost:8471/faults/cdu-1/pump_failure                 # all pumps of cdu-1 fail
    curl -X POST localhost:8471/faults/cdu-1/leak -d '{"zone": 2}'
    curl -X DELETE localhost:8471/faults/cdu-1                             # clear every fault of cdu-1
    curl localhost:8471/state                                             # what the plant serves now
"""

from __future__ import annotations

import asyncio
import json
from collections import defaultdict
from typing import Any

import structlog
from aiohttp import web

from dcim.app.config import Config, Device
from dcim.drivers.registry import PROTOCOLS
from dcim.simulators.plant import FAULTS, Plant

log = structlog.get_logger(__name__)

TICK_S = 0.25


async def wait_listening(ready: asyncio.Event, simulators: asyncio.Future[None]) -> None:
    """Until `run_simulators(..., ready=ready)` says every simulated device is served (each protocol's simulator
    signals it once its sockets are bound: nothing is probed). If the simulators stop first (a port taken),
    their error is raised here."""
    waiter: asyncio.Future[Any] = asyncio.ensure_future(ready.wait())
    try:
        await asyncio.wait([waiter, simulators], return_when=asyncio.FIRST_COMPLETED)
    finally:
        waiter.cancel()
    if not ready.is_set():
        simulators.result()
        raise RuntimeError("the simulators stopped before serving")


def simulated_devices(config: Config) -> dict[str, list[Device]]:
    by_protocol: dict[str, list[Device]] = defaultdict(list)
    for device in config.devices:
        if device.simulate:
            by_protocol[device.protocol].append(device)
    return dict(by_protocol)


async def tick(plant: Plant) -> None:
    loop = asyncio.get_running_loop()
    last = loop.time()
    while True:
        await asyncio.sleep(TICK_S)
        now = loop.time()
        plant.advance(now - last)
        last = now


def control_app(plant: Plant) -> web.Application:
    async def inject(request: web.Request) -> web.Response:
        device, fault = request.match_info["device"], request.match_info["fault"]
        params: dict[str, Any] = {}
        if request.can_read_body:
            try:
                params = await request.json()
            except json.JSONDecodeError:
                return web.json_response({"error": "body must be a JSON object"}, status=400)
            if not isinstance(params, dict):
                return web.json_response({"error": "body must be a JSON object"}, status=400)
        try:
            plant.inject(device, fault, **params)
        except (KeyError, ValueError) as err:
            return web.json_response({"error": str(err).strip("'\"")}, status=400)
        log.info("fault injected", device=device, fault=fault, params=params)
        return web.json_response({"device": device, "fault": fault, "params": params})

    async def clear(request: web.Request) -> web.Response:
        device = request.match_info["device"]
        plant.clear(device, request.match_info.get("fault"))
        log.info("fault cleared", device=device, fault=request.match_info.get("fault", "all"))
        return web.json_response({"device": device, "faults": plant.faults.get(device, {})})

    async def state(request: web.Request) -> web.Response:
        return web.json_response({
            "faults": plant.faults,
            "available": FAULTS,
            "devices": {d: plant.values(d) for d in plant.kinds if plant.kinds[d] in ("cdu", "chiller", "pdu")},
        })

    async def rack(request: web.Request) -> web.Response:
        rack_id = request.match_info["rack"]
        if rack_id not in plant.racks:
            return web.json_response({"error": f"no rack {rack_id!r}"}, status=404)
        body = await request.json()
        state = plant.racks[rack_id]
        if "extra_kw" in body:
            state.extra_kw = float(body["extra_kw"])
        if "utilization" in body:
            state.utilization = float(body["utilization"])
        return web.json_response({"rack": rack_id, "extra_kw": state.extra_kw, "utilization": state.utilization})

    app = web.Application()
    app.router.add_post("/faults/{device}/{fault}", inject)
    app.router.add_delete("/faults/{device}/{fault}", clear)
    app.router.add_delete("/faults/{device}", clear)
    app.router.add_get("/state", state)
    app.router.add_post("/racks/{rack}", rack)
    return app


async def serve_control(plant: Plant, host: str, port: int, ready: asyncio.Event | None = None) -> None:
    runner = web.AppRunner(control_app(plant), access_log=None)
    await runner.setup()
    try:
        await web.TCPSite(runner, host, port).start()
        log.info("simulator control endpoint", url=f"http://{host}:{port}")
        if ready is not None:
            ready.set()
        await asyncio.Event().wait()
    finally:
        await runner.cleanup()


async def run_simulators(config: Config, plant: Plant | None = None, *, control_port: int | None = None,
                         control_host: str = "127.0.0.1", ready: asyncio.Event | None = None) -> None:
    """Serve until cancelled. `ready` is set (and "simulators ready" logged) once every protocol's simulator and
    the control endpoint have said they are listening."""
    plant = plant or Plant(config)
    groups = simulated_devices(config)
    if not groups:
        raise ValueError("no device has `simulate: true`: nothing to serve")
    serves = {protocol: PROTOCOLS.get(protocol).simulator_serve() for protocol in groups}
    listening: list[asyncio.Event] = []
    async with asyncio.TaskGroup() as tg:
        tg.create_task(tick(plant), name="plant")
        for protocol, devices in groups.items():
            listening.append(asyncio.Event())
            serving = serves[protocol](plant, devices, profile_dirs=config.extra_profile_dirs(), ready=listening[-1])
            tg.create_task(serving, name=f"simulate:{protocol}")
            log.info("simulating", protocol=protocol, devices=[d.id for d in devices])
        if control_port is not None:
            listening.append(asyncio.Event())
            tg.create_task(serve_control(plant, control_host, control_port, listening[-1]), name="simulator-control")
        # A simulator that fails cancels this wait with the rest of the group.
        for event in listening:
            await event.wait()
        log.info("simulators ready", devices=[d.id for devices in groups.values() for d in devices])
        if ready is not None:
            ready.set()
