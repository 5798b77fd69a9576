// The Function App's entry point (package.json "main"): imports every registration.

import "../activities/register.js";
import "../orchestrations/register.js";
import "./deployments/register.js";
import "./reports/register.js";
import "./query/register.js";
