"""The web dashboard (`xdream dashboard`): a live session from its status stream, or a
finished one from its journal, on a page served from 127.0.0.1 (docs/dashboard.md).

Needs the `dashboard` extra (aiohttp, and plotly only for the plotly.min.js its wheel
ships: the page fetches nothing from the internet)."""
