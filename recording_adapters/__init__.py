"""Turn a rig's stream into spike counts per presentation (numpy and sockets;
no torch, no psychopy)."""
