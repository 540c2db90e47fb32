"""``burst deploy`` follows the builds of the deployed app's images (the agents build them as
the functions are deployed) and prints their output, step by step, until each is ready."""

from __future__ import annotations

import sys
import threading
import time
from typing import TYPE_CHECKING

from burst._logs import LogFollower, print_line
from burst.config import seconds_setting
from burst.image import BUILD_STATUS

if TYPE_CHECKING:
    from burst.client import Client

#: How long ``burst deploy`` waits for an agent to start building an image before it
#: leaves the build to the first container (no agent up, or an older one).
START_WAIT_SETTING = "BURST_DEPLOY_BUILD_START_WAIT"
START_WAIT_DEFAULT = 15.0
#: How long ``burst deploy`` waits, at most, for builds to finish.
TIMEOUT_SETTING = "BURST_DEPLOY_BUILD_TIMEOUT"
TIMEOUT_DEFAULT = 1800.0


class BuildWatcher(LogFollower):
    """Prints an app's ``[image build]`` lines and tracks each agent's build of the images
    named (by their hash's first 12 characters)."""

    def __init__(self, client: Client, app: str, images: dict[str, str]) -> None:
        super().__init__(client, app)
        #: short hash -> a function of that image (to name it in messages).
        self.images = images
        #: short hash -> agent -> "building" | "ready" | "failed: ..."
        self.states: dict[str, dict[str, str]] = {h: {} for h in images}
        self._changed = threading.Condition()

    def _on_line(self, item: dict[str, object]) -> None:
        if item.get("type") == "subscribed":
            self.subscribed.set()
            return
        text = str(item.get("line", ""))
        if item.get("type") != "log" or not text.startswith("[image build]"):
            return
        print_line(sys.stderr, f"[{item.get('function')}] {text}")
        m = BUILD_STATUS.match(text)
        if m and m.group(1) in self.states:
            state = m.group(2)
            if state == "failed":
                state = "failed" + text[m.end():]
            with self._changed:
                self.states[m.group(1)][m.group(3)] = state
                self._changed.notify_all()

    def wait(self) -> tuple[list[str], list[str]]:
        """Wait for the builds; returns (failures, images no agent started building)."""
        start_wait = seconds_setting(START_WAIT_SETTING, START_WAIT_DEFAULT)
        now = time.monotonic()
        start_by, end_by = now + start_wait, now + seconds_setting(TIMEOUT_SETTING,
                                                                    TIMEOUT_DEFAULT)
        with self._changed:
            while True:
                now = time.monotonic()
                pending = [h for h, by in self.states.items()
                           if not by or any(s == "building" for s in by.values())]
                if not pending or now >= end_by or not self.is_alive():
                    break
                unstarted = [h for h in pending if not self.states[h]]
                if unstarted and now >= start_by and len(unstarted) == len(pending):
                    break  # what is left, no agent builds now
                until = start_by if unstarted and now < start_by else end_by
                self._changed.wait(max(0.05, until - now))
        failures = [f"image of {self.images[h]} ({h}) on agent {agent}: {s[len('failed: '):]}"
                    for h, by in self.states.items() for agent, s in by.items()
                    if s.startswith("failed")]
        return failures, [self.images[h] for h, by in self.states.items() if not by]
