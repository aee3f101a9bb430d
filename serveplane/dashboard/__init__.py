"""The dashboard: ``feed`` (what the controller publishes under the ``dashboard`` long-poll
key), ``server`` (the page, its files and the server-sent events, in the proxy), and
``static/`` (plain HTML, CSS and a script: no build step, nothing fetched from elsewhere)."""
