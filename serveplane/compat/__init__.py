"""Ray Serve 1.x's API on serveplane: change the import line, keep the code.

::

    from serveplane.compat import serve          # was: from ray import serve

    client = serve.start(detached=True, http_port=8000)
    client.create_backend("echo:v1", echo)
    client.create_endpoint("echo", backend="echo:v1", route="/echo", methods=["GET", "POST"])
    ray.get(client.get_handle("echo").remote(x=1))

Backends created through it use the classic request convention
(``serveplane.replica.convention``); the README's migration notes list what differs.
"""

from serveplane.compat import serve

__all__ = ["serve"]
