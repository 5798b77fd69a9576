using 'main.bicep'

// An example: copy, then change the prefix, the key references and the region to yours.
param namePrefix = 'dship'
param location = 'westeurope'
param storageSku = 'Standard_ZRS'
param iotHubSku = 'S1'
param acrSku = 'Standard'
param functionSku = 'FC1'
param emailDataLocation = 'Europe'
param emailSenderUsername = 'DoNotReply'
param localRegistryAddress = 'localhost:5000'
param defaultDeadline = 'P14D'
param signingKeySecretUri = 'https://dship-kv.vault.azure.net/secrets/bundle-signing-key'
param signingKeyId = 'replace-with-the-key-id-printed-by-deltaship-keygen'
param deviceBatchSize = 100
