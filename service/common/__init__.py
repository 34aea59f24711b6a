"""What the client and the server share: the wire protocol, the 4xx error shape and image
decoding. Imports neither torch nor FastAPI nor any server extra."""
