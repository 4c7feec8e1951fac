"""The opcua source across a restart of the OPC UA server (Eclipse Milo, an instance of this
module's own): it reconnects, creates its subscription again and values flow on."""

from __future__ import annotations

import time

import pytest

from tests.integration.test_opcua_source import NS, Running, pipeline, records, source, until

pytestmark = pytest.mark.integration


async def test_server_restart_reconnects_and_recreates_the_subscription(own_opcua_server,
                                                                        tmp_path):
    p = pipeline(tmp_path, {"plc": {**source(own_opcua_server, "records", [
        {"node-id": NS + "Counter"}, {"node-id": NS + "String"}]), "reconnect-max": 2}})
    async with Running(p):
        src = p.sources[0]
        await until(lambda: src.ready and len(records(tmp_path)) >= 5, "values before")
        own_opcua_server.stop()
        stopped_at = int(time.time() * 1000)
        await until(lambda: not src.ready, "the source to notice")
        own_opcua_server.start()
        await until(lambda: len([r for r in records(tmp_path) if r["browse_name"] == "Counter"
                                 and r["server_timestamp"] > stopped_at]) >= 5,
                    "Counter values from the restarted server", 90)
        assert src.ready and src.reconnects >= 1
    after = [r for r in records(tmp_path) if r["server_timestamp"] > stopped_at]
    # A new server: its Counter starts again from 0; a new subscription sends String anew.
    assert min(r["value"] for r in after if r["browse_name"] == "Counter") < 50
    assert any(r["browse_name"] == "String" for r in after)
