// Tests start registries the same way local mode does.
export * from "../../local/services/registry.js";
