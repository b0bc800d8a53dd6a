"""From a release to a running fleet: compose stacks per machine."""
