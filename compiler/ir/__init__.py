"""Blueprints (BlueprintIR): the op schema, loading files, the security validator, shape inference, the
canonical form and content address, the builder of nn.Modules, and `esper blueprint`."""
