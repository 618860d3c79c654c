"""Stand-ins for the brain and the rig: ConvNet units as neurons, and fake rig
peers that speak real wire formats so that the real adapters are what the
tests exercise."""
