"""One module per tab: build(choices) -> a dataclass of components, wire(ui, services) -> events."""
