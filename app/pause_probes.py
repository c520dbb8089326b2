"""What the auto-pause looks at: listed programs, a full-screen window, other programs on the GPU, idle time, battery.

Each probe answers ``None`` (with a note for the user) where it cannot tell on this PC, never
raises, and takes milliseconds, so :func:`observe` can run every few seconds in a background
thread. Blossom's own processes (the GUI, the worker and their children) are never counted as
"another program". No Qt here: the probes read psutil, pynvml, xprop (X11) and the Windows API.
"""
from __future__ import annotations

import ctypes
import datetime
import logging
import os
import subprocess
import sys
from typing import Iterable

from app.pause_policy import GpuUser, Observation

logger = logging.getLogger(__name__)

DESKTOP_GPU_PROGRAMS = frozenset({"xorg", "xwayland", "gnome-shell", "kwin_x11", "kwin_wayland", "dwm", "explorer",
                                  "csrss", "searchhost", "startmenuexperiencehost", "textinputhost", "windowserver"})
"""Programs that hold GPU memory on every desktop: never a reason to pause."""
NO_GPU_NOTE = "No NVIDIA GPU or driver found: the GPU check is off on this PC"


def normalize(name: str) -> str:
    """Process names compare without case and without ``.exe``; Linux cuts them at 15 characters."""
    name = name.strip().lower()
    return name[:-4] if name.endswith(".exe") else name


def listed_programs_running(listed: Iterable[str], own_pids: set[int]) -> tuple[str, ...]:
    """The listed programs that run now (as listed), in list order."""
    import psutil

    wanted = {normalize(name): name for name in listed if name.strip()}
    wanted.update({key[:15]: name for key, name in list(wanted.items()) if len(key) > 15})  # /proc's comm
    found: dict[str, str] = {}
    for process in psutil.process_iter(["name"]):
        name = normalize(process.info.get("name") or "")
        if name in wanted and process.pid not in own_pids:
            found.setdefault(wanted[name], wanted[name])
    order = list(dict.fromkeys(wanted.values()))
    return tuple(sorted(found, key=order.index))


def own_process_ids(roots: Iterable[int]) -> set[int]:
    """``roots`` (this app, its worker) and every process they started."""
    import psutil

    pids: set[int] = set()
    for pid in roots:
        if not pid:
            continue
        pids.add(pid)
        try:
            pids.update(child.pid for child in psutil.Process(pid).children(recursive=True))
        except psutil.Error:
            pass
    return pids


def _x11_fullscreen(own_pids: set[int]) -> tuple[str | None, str]:
    """The active X11 window's title if it is full-screen (xprop, as window managers set _NET_WM_STATE)."""
    def xprop(*arguments: str) -> str:
        return subprocess.run(["xprop", *arguments], capture_output=True, text=True, timeout=2).stdout

    try:
        answer = xprop("-root", "_NET_ACTIVE_WINDOW")
        if "=" not in answer and "#" not in answer:
            return None, "Full-screen programs cannot be detected on this desktop (no window manager says which " \
                         "window is active)"
        active = int(answer.rsplit(" ", 1)[-1].strip(), 0)  # "window id # 0x1e00004" (or a plain number)
        if active == 0:
            return None, ""
        properties = xprop("-id", str(active), "_NET_WM_STATE", "_NET_WM_PID", "_NET_WM_NAME")
    except (OSError, subprocess.SubprocessError):
        return None, "Full-screen programs cannot be detected on this desktop (xprop is missing)"
    except ValueError:
        return None, ""
    if "_NET_WM_STATE_FULLSCREEN" not in properties:
        return None, ""
    for line in properties.splitlines():
        if line.startswith("_NET_WM_PID") and line.rsplit(" ", 1)[-1].isdigit():
            if int(line.rsplit(" ", 1)[-1]) in own_pids:
                return None, ""  # Blossom's own window
    title = next((line.split("=", 1)[1].strip().strip('"') for line in properties.splitlines()
                  if line.startswith("_NET_WM_NAME") and "=" in line), "")
    return title, ""


def _windows_fullscreen(own_pids: set[int]) -> tuple[str | None, str]:
    """The foreground window's title if it covers its whole monitor (not the desktop or the taskbar)."""
    from ctypes import wintypes

    user32 = ctypes.windll.user32  # type: ignore[attr-defined]
    window = user32.GetForegroundWindow()
    if not window or window in (user32.GetShellWindow(), user32.GetDesktopWindow()):
        return None, ""
    pid = wintypes.DWORD()
    user32.GetWindowThreadProcessId(window, ctypes.byref(pid))
    if pid.value in own_pids:
        return None, ""
    rect = wintypes.RECT()
    user32.GetWindowRect(window, ctypes.byref(rect))

    class MonitorInfo(ctypes.Structure):
        _fields_ = [("cbSize", wintypes.DWORD), ("rcMonitor", wintypes.RECT), ("rcWork", wintypes.RECT),
                    ("dwFlags", wintypes.DWORD)]

    info = MonitorInfo()
    info.cbSize = ctypes.sizeof(MonitorInfo)
    user32.GetMonitorInfoW(user32.MonitorFromWindow(window, 2), ctypes.byref(info))
    screen = info.rcMonitor
    if (rect.left, rect.top, rect.right, rect.bottom) != (screen.left, screen.top, screen.right, screen.bottom):
        return None, ""
    buffer = ctypes.create_unicode_buffer(256)
    user32.GetWindowTextW(window, buffer, 256)
    return buffer.value, ""


def fullscreen_window(own_pids: set[int]) -> tuple[str | None, str]:
    """(title of a full-screen window of another program or None, a note when this cannot be told here)."""
    try:
        if sys.platform == "win32":
            return _windows_fullscreen(own_pids)
        if os.environ.get("DISPLAY"):
            return _x11_fullscreen(own_pids)
    except Exception as error:  # a probe must never stop the app
        logger.debug("Full-screen check failed", exc_info=True)
        return None, f"Full-screen programs cannot be detected here ({type(error).__name__})"
    return None, "Full-screen programs cannot be detected on this desktop"


def gpu_usage(own_pids: set[int]) -> tuple[int | None, tuple[GpuUser, ...], str]:
    """(how busy the GPUs are because of other programs, in percent; those programs; a note).

    With per-process samples (``nvmlDeviceGetProcessUtilization``), only other programs' share
    counts, so Blossom's own server working hard never pauses itself; without them the whole GPU's
    utilisation counts, but only while another program (not the desktop) has memory on it.
    """
    try:
        import pynvml

        pynvml.nvmlInit()
    except Exception:
        return None, (), NO_GPU_NOTE
    try:
        import psutil

        busiest, users = 0, []
        for index in range(pynvml.nvmlDeviceGetCount()):
            handle = pynvml.nvmlDeviceGetHandleByIndex(index)
            processes = [*pynvml.nvmlDeviceGetComputeRunningProcesses(handle),
                         *pynvml.nvmlDeviceGetGraphicsRunningProcesses(handle)]
            others = []
            for process in processes:
                if process.pid in own_pids:
                    continue
                try:
                    name = psutil.Process(process.pid).name()
                except psutil.Error:
                    name = f"process {process.pid}"
                if normalize(name) in DESKTOP_GPU_PROGRAMS:
                    continue
                memory = int(getattr(process, "usedGpuMemory", 0) or 0) // 2**20
                others.append(GpuUser(name, process.pid, memory))
            if not others:
                continue
            try:
                samples = pynvml.nvmlDeviceGetProcessUtilization(handle, 0)
                other_pids = {user.pid for user in others}
                load = min(100, sum(sample.smUtil for sample in samples if sample.pid in other_pids))
            except Exception:  # no per-process samples on this GPU or driver
                load = int(pynvml.nvmlDeviceGetUtilizationRates(handle).gpu)
            busiest = max(busiest, load)
            users.extend(others)
        return busiest, tuple(users), ""
    except Exception as error:
        logger.debug("GPU check failed", exc_info=True)
        return None, (), f"The GPU check failed ({type(error).__name__})"
    finally:
        try:
            pynvml.nvmlShutdown()
        except Exception:
            pass


def idle_seconds() -> tuple[float | None, str]:
    """Seconds since the last keyboard or mouse input (Windows; X11 with libXss), else None and a note."""
    try:
        if sys.platform == "win32":
            from ctypes import wintypes

            class LastInput(ctypes.Structure):
                _fields_ = [("cbSize", wintypes.UINT), ("dwTime", wintypes.DWORD)]

            info = LastInput()
            info.cbSize = ctypes.sizeof(LastInput)
            ctypes.windll.user32.GetLastInputInfo(ctypes.byref(info))  # type: ignore[attr-defined]
            return (ctypes.windll.kernel32.GetTickCount() - info.dwTime) / 1000, ""  # type: ignore[attr-defined]
        if os.environ.get("DISPLAY"):
            return _x11_idle_seconds(), ""
    except Exception:
        logger.debug("Idle time check failed", exc_info=True)
    return None, "The idle time cannot be read on this desktop: the 'while I use this PC' rule is off"


def _x11_idle_seconds() -> float:
    class ScreenSaverInfo(ctypes.Structure):
        _fields_ = [("window", ctypes.c_ulong), ("state", ctypes.c_int), ("kind", ctypes.c_int),
                    ("til_or_since", ctypes.c_ulong), ("idle", ctypes.c_ulong), ("event_mask", ctypes.c_ulong)]

    xlib, xss = ctypes.cdll.LoadLibrary("libX11.so.6"), ctypes.cdll.LoadLibrary("libXss.so.1")
    xlib.XOpenDisplay.restype = ctypes.c_void_p
    xlib.XDefaultRootWindow.restype = ctypes.c_ulong
    xlib.XDefaultRootWindow.argtypes = [ctypes.c_void_p]
    xss.XScreenSaverAllocInfo.restype = ctypes.POINTER(ScreenSaverInfo)
    xss.XScreenSaverQueryInfo.argtypes = [ctypes.c_void_p, ctypes.c_ulong, ctypes.POINTER(ScreenSaverInfo)]
    display = xlib.XOpenDisplay(None)
    if not display:
        raise OSError("cannot open the X display")
    try:
        info = xss.XScreenSaverAllocInfo()
        if not xss.XScreenSaverQueryInfo(display, xlib.XDefaultRootWindow(display), info):
            raise OSError("no MIT-SCREEN-SAVER extension")
        idle = info.contents.idle / 1000
        xlib.XFree(info)
        return idle
    finally:
        xlib.XCloseDisplay.argtypes = [ctypes.c_void_p]
        xlib.XCloseDisplay(display)


def on_battery() -> bool | None:
    """True on battery, False on mains, None without a battery (or where psutil cannot tell)."""
    try:
        import psutil

        battery = psutil.sensors_battery()
    except Exception:
        return None
    if battery is None or battery.power_plugged is None:
        return None
    return not battery.power_plugged


def observe(programs: Iterable[str], own_roots: Iterable[int], check_idle: bool) -> Observation:
    """One look at the PC for :func:`app.pause_policy.decide`; ``own_roots`` (the worker) and all they started
    are Blossom's, as is this process (but not every child of it: a program the user starts from a
    Blossom window is not Blossom)."""
    own = own_process_ids(own_roots) | {os.getpid()}
    window, window_note = fullscreen_window(own)
    utilization, users, gpu_note = gpu_usage(own)
    idle, idle_note = idle_seconds() if check_idle else (None, "")
    return Observation(programs_running=listed_programs_running(programs, own), fullscreen_window=window,
                       gpu_utilization=utilization, gpu_users=users, idle_seconds=idle, on_battery=on_battery(),
                       now=datetime.datetime.now().time(),
                       notes=tuple(note for note in (window_note, gpu_note, idle_note) if note))
