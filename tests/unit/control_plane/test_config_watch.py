"""ConfigWatcher: changes are picked up, bad edits keep the last good config."""

from __future__ import annotations

import asyncio
import os
from collections.abc import AsyncIterator
from pathlib import Path

import pytest
from mesh_control_plane.config import ConfigLoadError, ConfigWatcher, MeshConfig
from mesh_control_plane.config.inotify import DirectoryEvents
from mesh_control_plane.config.watch import BACKSTOP_POLL_INTERVAL

TIMEOUT = 5.0


def service_yaml(name: str, port: int = 80) -> str:
    return (
        "apiVersion: networking.istio.io/v1\n"
        "kind: ServiceEntry\n"
        f"metadata: {{name: {name}}}\n"
        "spec: {resolution: STATIC, location: MESH_INTERNAL,\n"
        f"  hosts: [{name}.mesh], ports: [{{number: {port}, name: http}}]}}\n"
    )


def replace(path: Path, text: str) -> None:
    """Write as editors and ConfigMaps do: a new file renamed over the old one."""
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_text(text)
    os.replace(tmp, path)


class Events:
    """Callbacks that record, in order, what the watcher reported."""

    def __init__(self) -> None:
        self.queue: asyncio.Queue[MeshConfig | ConfigLoadError] = asyncio.Queue()

    def on_config(self, config: MeshConfig) -> None:
        self.queue.put_nowait(config)

    def on_error(self, error: ConfigLoadError) -> None:
        self.queue.put_nowait(error)

    async def next(self) -> MeshConfig | ConfigLoadError:
        return await asyncio.wait_for(self.queue.get(), TIMEOUT)

    async def next_config(self) -> MeshConfig:
        event = await self.next()
        assert isinstance(event, MeshConfig), event
        return event

    async def next_error(self) -> ConfigLoadError:
        event = await self.next()
        assert isinstance(event, ConfigLoadError), event
        return event


def hosts(config: MeshConfig) -> list[str]:
    return [host for se in config.service_entries for host in se.hosts]


@pytest.fixture
def events() -> Events:
    return Events()


@pytest.fixture
async def watcher(tmp_path: Path, events: Events) -> AsyncIterator[ConfigWatcher]:
    (tmp_path / "a.yaml").write_text(service_yaml("a"))
    w = ConfigWatcher(
        tmp_path, events.on_config, events.on_error, poll_interval=0.01, debounce=0.02
    )
    w.start()
    yield w
    await w.stop()


async def test_initial_load_and_change_are_reported(
    watcher: ConfigWatcher, events: Events, tmp_path: Path
) -> None:
    first = await events.next_config()
    assert hosts(first) == ["a.mesh"]
    assert watcher.last_good == first

    (tmp_path / "sub").mkdir()
    replace(tmp_path / "sub" / "b.yaml", service_yaml("b"))
    second = await events.next_config()
    assert hosts(second) == ["a.mesh", "b.mesh"]
    assert watcher.last_good == second


async def test_bad_edit_keeps_last_good_then_fix_is_picked_up(
    watcher: ConfigWatcher, events: Events, tmp_path: Path
) -> None:
    good = await events.next_config()

    replace(tmp_path / "a.yaml", service_yaml("a").replace("hosts", "hostz"))
    error = await events.next_error()
    assert [str(p) for p in error.problems] == [
        "a.yaml: ServiceEntry default/a: spec.hostz: unknown field (IST0106)",
        "a.yaml: ServiceEntry default/a: spec.hosts: missing required field (IST0106)",
    ]
    assert watcher.last_good == good
    assert watcher.last_errors == error.problems

    replace(tmp_path / "a.yaml", service_yaml("a", port=8080))
    fixed = await events.next_config()
    assert fixed.service_entries[0].ports[0].number == 8080
    assert watcher.last_good == fixed
    assert watcher.last_errors == ()


async def test_a_bad_edit_undone_reports_the_last_good_config_again(
    watcher: ConfigWatcher, events: Events, tmp_path: Path
) -> None:
    """The config equals the last good one, yet the consumer must learn that
    the problems it was told of are gone (the console and `meshctl status`
    would show them forever)."""
    good = await events.next_config()
    (tmp_path / "broken.yaml").write_text(service_yaml("b").replace("hosts", "hostz"))
    await events.next_error()
    (tmp_path / "broken.yaml").unlink()
    assert await events.next_config() == good
    assert watcher.last_errors == ()


async def test_editor_temp_files_are_ignored(
    watcher: ConfigWatcher, events: Events, tmp_path: Path
) -> None:
    await events.next_config()
    for name in [".#a.yaml", "a.yaml~", ".a.yaml.swp", "#a.yaml#"]:
        (tmp_path / name).write_text("not: [yaml\n")
    replace(tmp_path / "c.yaml", service_yaml("c"))
    # Had the garbage been read, an error would come first (or instead).
    assert hosts(await events.next_config()) == ["a.mesh", "c.mesh"]


async def test_an_unchanged_config_is_not_reported_again(
    watcher: ConfigWatcher, events: Events
) -> None:
    first = await events.next_config()
    assert await watcher.reload() is True
    assert events.queue.empty()
    assert watcher.last_good is first


async def test_a_failing_callback_does_not_stop_the_watcher(tmp_path: Path) -> None:
    (tmp_path / "a.yaml").write_text(service_yaml("a"))
    seen: asyncio.Queue[MeshConfig] = asyncio.Queue()

    def on_config(config: MeshConfig) -> None:
        seen.put_nowait(config)
        raise RuntimeError("subscriber bug")

    w = ConfigWatcher(tmp_path, on_config, lambda err: None, poll_interval=0.01, debounce=0.01)
    w.start()
    try:
        await asyncio.wait_for(seen.get(), TIMEOUT)
        replace(tmp_path / "a.yaml", service_yaml("a", port=81))
        config = await asyncio.wait_for(seen.get(), TIMEOUT)
        assert config.service_entries[0].ports[0].number == 81
    finally:
        await w.stop()


async def test_missing_directory_is_an_error(tmp_path: Path, events: Events) -> None:
    w = ConfigWatcher(tmp_path / "absent", events.on_config, events.on_error)
    assert await w.reload() is False
    error = await events.next_error()
    assert [p.message for p in error.problems] == ["config directory does not exist"]
    assert w.last_good is None


async def test_stop_ends_the_task(tmp_path: Path, events: Events) -> None:
    w = ConfigWatcher(tmp_path, events.on_config, events.on_error, poll_interval=0.01)
    task = w.start()
    await events.next_config()
    await w.stop()
    assert task.done()
    await w.stop()  # idempotent


# inotify: the poll interval is an hour, so only an inotify wake-up explains a
# change seen within TIMEOUT.
HOUR = 3600.0


@pytest.fixture
async def notified(tmp_path: Path, events: Events) -> AsyncIterator[ConfigWatcher]:
    (tmp_path / "a.yaml").write_text(service_yaml("a"))
    w = ConfigWatcher(tmp_path, events.on_config, events.on_error, poll_interval=HOUR)
    w.start()
    await events.next_config()
    assert w.notified, "inotify is not watching the directory"
    yield w
    await w.stop()


async def test_inotify_sees_a_write_without_polling(
    notified: ConfigWatcher, events: Events, tmp_path: Path
) -> None:
    replace(tmp_path / "a.yaml", service_yaml("a", port=81))
    assert (await events.next_config()).service_entries[0].ports[0].number == 81
    # An in-place write (no rename) too.
    (tmp_path / "a.yaml").write_text(service_yaml("a", port=82))
    assert (await events.next_config()).service_entries[0].ports[0].number == 82


async def test_inotify_watches_a_new_subdirectory(
    notified: ConfigWatcher, events: Events, tmp_path: Path
) -> None:
    (tmp_path / "sub").mkdir()
    (tmp_path / "sub" / "deeper").mkdir()
    (tmp_path / "sub" / "deeper" / "b.yaml").write_text(service_yaml("b"))
    assert hosts(await events.next_config()) == ["a.mesh", "b.mesh"]
    # The new directory is watched itself: a later edit inside it is seen.
    (tmp_path / "sub" / "deeper" / "b.yaml").unlink()
    assert hosts(await events.next_config()) == ["a.mesh"]


async def test_inotify_follows_a_configmap_swap(tmp_path: Path, events: Events) -> None:
    """A ConfigMap volume: visible symlinks into `..data`, itself a symlink that
    the kubelet renames over with a new timestamped directory."""

    def publish(generation: int, port: int) -> None:
        data = tmp_path / f"..gen{generation}"
        data.mkdir()
        (data / "a.yaml").write_text(service_yaml("a", port=port))
        (tmp_path / "..data_tmp").symlink_to(data.name)
        os.replace(tmp_path / "..data_tmp", tmp_path / "..data")

    publish(1, 80)
    (tmp_path / "a.yaml").symlink_to("..data/a.yaml")
    w = ConfigWatcher(tmp_path, events.on_config, events.on_error, poll_interval=HOUR)
    w.start()
    try:
        assert (await events.next_config()).service_entries[0].ports[0].number == 80
        publish(2, 90)
        assert (await events.next_config()).service_entries[0].ports[0].number == 90
    finally:
        await w.stop()


async def test_a_bad_write_seen_by_inotify_keeps_the_last_good_config(
    notified: ConfigWatcher, events: Events, tmp_path: Path
) -> None:
    good = notified.last_good
    (tmp_path / "a.yaml").write_text("kind: [broken\n")
    await events.next_error()
    assert notified.last_good is good


async def test_an_edit_in_several_steps_is_loaded_once(tmp_path: Path, events: Events) -> None:
    """Each step inside the debounce window restarts it: the half-written file
    (a ServiceEntry without its hosts) is never loaded."""
    (tmp_path / "a.yaml").write_text(service_yaml("a"))
    w = ConfigWatcher(tmp_path, events.on_config, events.on_error, poll_interval=HOUR, debounce=2.0)
    w.start()
    try:
        await events.next_config()
        head, tail = service_yaml("b").split("  hosts:")
        with (tmp_path / "b.yaml").open("w") as file:
            file.write(head)
            file.flush()
            await asyncio.sleep(0.3)  # an editor's pause between writes, inside the window
            file.write("  hosts:" + tail)
        assert hosts(await events.next_config()) == ["a.mesh", "b.mesh"]
        assert events.queue.empty()
    finally:
        await w.stop()


async def test_without_inotify_polling_still_sees_changes(
    tmp_path: Path, events: Events, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(DirectoryEvents, "open", classmethod(lambda cls, root: None))
    (tmp_path / "a.yaml").write_text(service_yaml("a"))
    w = ConfigWatcher(tmp_path, events.on_config, events.on_error, poll_interval=0.01)
    w.start()
    try:
        await events.next_config()
        assert not w.notified
        replace(tmp_path / "a.yaml", service_yaml("a", port=81))
        assert (await events.next_config()).service_entries[0].ports[0].number == 81
    finally:
        await w.stop()


async def test_with_inotify_polling_is_only_a_slow_backstop(tmp_path: Path, events: Events) -> None:
    """The poll asked for (10 ms) is slowed to the backstop while inotify
    watches; without inotify it is kept."""
    (tmp_path / "a.yaml").write_text(service_yaml("a"))
    timeouts: list[float] = []
    idle = asyncio.Event()

    async def sleep(seconds: float) -> None:
        timeouts.append(seconds)
        if seconds < BACKSTOP_POLL_INTERVAL:  # the debounce
            await asyncio.sleep(seconds)
            return
        idle.set()
        await asyncio.sleep(3600)  # only an inotify event ends an idle wait

    w = ConfigWatcher(tmp_path, events.on_config, events.on_error, poll_interval=0.01, sleep=sleep)
    w.start()
    try:
        await events.next_config()
        await asyncio.wait_for(idle.wait(), TIMEOUT)
        assert timeouts[0] == BACKSTOP_POLL_INTERVAL
        replace(tmp_path / "a.yaml", service_yaml("a", port=81))  # still seen at once
        assert (await events.next_config()).service_entries[0].ports[0].number == 81
    finally:
        await w.stop()
