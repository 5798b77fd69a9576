// IoT Hub: devices, their twins and configuration content; the built-in endpoint carries the
// edge modules' reports, read by the report function through its own consumer group.
param name string
param location string
param sku string
param units int

var reportsConsumerGroupName = 'deltaship-reports'

resource hub 'Microsoft.Devices/IotHubs@2023-06-30' = {
  name: name
  location: location
  sku: {
    name: sku
    capacity: units
  }
  properties: {
    minTlsVersion: '1.2'
    eventHubEndpoints: {
      events: {
        retentionTimeInDays: 7
        partitionCount: 4
      }
    }
    routing: {
      fallbackRoute: {
        name: '$fallback'
        source: 'DeviceMessages'
        condition: 'true'
        endpointNames: ['events']
        isEnabled: true
      }
    }
  }
}

resource reportsConsumerGroup 'Microsoft.Devices/IotHubs/eventHubEndpoints/ConsumerGroups@2023-06-30' = {
  name: '${hub.name}/events/${reportsConsumerGroupName}'
  properties: {
    name: reportsConsumerGroupName
  }
}

output name string = hub.name
output hostName string = hub.properties.hostName
output eventHubName string = hub.properties.eventHubEndpoints.events.path
output eventHubEndpoint string = hub.properties.eventHubEndpoints.events.endpoint
output reportsConsumerGroup string = reportsConsumerGroupName
