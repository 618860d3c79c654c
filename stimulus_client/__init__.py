"""The presentation client: receives blocks over ZeroMQ, shows them frame by
frame in a PsychoPy window (or headless), and reports what was shown when.
Needs numpy, pyzmq and msgpack (and psychopy for a window); never torch.

    config       the stimulus PC's TOML config (monitor, geometry, markers, eye, trials, keys)
    geometry     degrees -> pixels as PsychoPy does; the frame layout in numpy (headless)
    display      PsychoPyDisplay (a window on a PsychoPy Monitor) and HeadlessDisplay
    markers      event-code outputs: none, parallel port, serial strobe, LSL
    eye          eye-position sources: none, a scripted simulated eye
    keys         key sources: PsychoPy's keyboard, none
    connection   the peer connection, with a reconnect backoff that never sleeps
    presenter    the frame loop: trials, fixation, aborts, reports
    session_log  the presenter's own JSONL log
    runner       builds all of it from a config and runs it (`xdream present`, run_presenter.py)

docs/presenter.md tells how to run it on a stimulus PC.
"""
