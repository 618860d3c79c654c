"""The presentation client: receives blocks over ZeroMQ, shows them frame by
frame in a PsychoPy window (or headless), and reports what was shown when.
Needs numpy, pyzmq and msgpack (and psychopy for a window); never torch."""
