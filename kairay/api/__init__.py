"""The Workspace API: the bottom layer, which every package may import and which imports none of them.

Types for the Workspace (both versions), its CRD and CEL rules, structural validation, the error
vocabulary, typed annotations (`WorkspaceOptions`) and Kaito's ConfigMaps. docs/architecture.md has the
dependency order; import-linter holds it.
"""
