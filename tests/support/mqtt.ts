// Tests start the IoT Hub MQTT stand-in the same way local mode does.
export {
  HUB_MQTT_PORT,
  type HubStandIn,
  type ReceivedEvent,
  startHubStandIn,
} from "../../local/services/mqtt.js";
