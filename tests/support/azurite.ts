// Tests start Azurite the same way local mode does.
export { AZURITE_ACCOUNT, AZURITE_KEY, type Azurite, startAzurite } from "../../local/services/azurite.js";
